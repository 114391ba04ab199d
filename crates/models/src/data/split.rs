//! Class splits: which classes of a data set meta-train, which validate and
//! which test.
//!
//! Few-shot learning tests on classes never seen in training, so a data set is
//! split by class, not by image. A [`ClassSplit`] says how many classes go to
//! each of the three splits, in the data set's class order (train first, then
//! validation, then test); each size is a count, a fraction of the classes
//! found, or "the rest".
//!
//! ```
//! use models::{ClassSplit, SplitSize};
//! let split: ClassSplit = ClassSplit {
//!     train: "0.6".parse().unwrap(),
//!     val: SplitSize::Count(1),
//!     test: SplitSize::Rest,
//! };
//! // 10 classes: round(0.6·10) = 6 train, 1 validation, the 3 left test.
//! assert_eq!(split.resolve(10, "data").unwrap(), [6, 1, 3]);
//! // 2 classes cannot hold 1 + 1 + at least 1.
//! let e = ClassSplit { train: SplitSize::Count(1), ..split }.resolve(2, "data").unwrap_err();
//! assert!(e.to_string().contains("2 classes found"), "{e}");
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::data::ImageSet;
use crate::error::DataError;

/// The size of one split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SplitSize {
    /// Exactly this many classes.
    Count(usize),
    /// round(f · n) of the n classes found, f in [0, 1].
    Fraction(f64),
    /// The classes the other two splits leave (at most one split may say so).
    Rest,
}

impl fmt::Display for SplitSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitSize::Count(k) => write!(f, "{k}"),
            SplitSize::Fraction(x) => write!(f, "{x:?}"),
            SplitSize::Rest => write!(f, "rest"),
        }
    }
}

impl FromStr for SplitSize {
    type Err = String;
    /// `rest`, a whole number (`5`: a count) or a number with a decimal point
    /// in [0, 1] (`0.6`: a fraction).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("rest") {
            return Ok(SplitSize::Rest);
        }
        if let Ok(k) = s.parse::<usize>() {
            return Ok(SplitSize::Count(k));
        }
        match s.parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Ok(SplitSize::Fraction(x)),
            Ok(x) => Err(format!(
                "class split size {x}: a fraction must lie in [0, 1] (or give a whole number of classes)"
            )),
            Err(_) => Err(format!(
                "class split size {s:?}: expected a number of classes (5), a fraction (0.6) or `rest`"
            )),
        }
    }
}

/// How a data set's classes are divided into train, validation and test
/// splits, in class order. Train and test must each get at least one class;
/// validation may be empty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassSplit {
    /// Meta-training classes.
    pub train: SplitSize,
    /// Validation classes.
    pub val: SplitSize,
    /// Test classes.
    pub test: SplitSize,
}

impl Default for ClassSplit {
    /// Omniglot's usual split (Vinyals et al. 2016): 1,200 training
    /// characters, no validation, the rest (423) for testing.
    fn default() -> Self {
        ClassSplit {
            train: SplitSize::Count(1200),
            val: SplitSize::Count(0),
            test: SplitSize::Rest,
        }
    }
}

impl fmt::Display for ClassSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "train {}, validation {}, test {}",
            self.train, self.val, self.test
        )
    }
}

impl ClassSplit {
    /// The split from optional sizes (e.g. command-line flags): a missing
    /// validation size is 0; if exactly one of train and test is missing it is
    /// [`SplitSize::Rest`]; if both are, `train_default` trains and the rest tests.
    pub fn from_sizes(
        train: Option<SplitSize>,
        val: Option<SplitSize>,
        test: Option<SplitSize>,
        train_default: SplitSize,
    ) -> Self {
        let val = val.unwrap_or(SplitSize::Count(0));
        let (train, test) = match (train, test) {
            (Some(tr), Some(te)) => (tr, te),
            (Some(tr), None) => (tr, SplitSize::Rest),
            (None, Some(te)) => (SplitSize::Rest, te),
            (None, None) => (train_default, SplitSize::Rest),
        };
        ClassSplit { train, val, test }
    }

    /// Class counts `[train, val, test]` for `n` classes found at `path`
    /// (reported in errors). Classes beyond the three counts are unused.
    ///
    /// # Errors
    /// [`DataError::ClassSplit`] if more than one size is `rest`, or the sizes
    /// add up to more than `n`; [`DataError::EmptySplit`] if train or test
    /// would get no class. Both say how many classes were found and what the
    /// split asks for.
    pub fn resolve(&self, n: usize, path: impl AsRef<Path>) -> Result<[usize; 3], DataError> {
        let path = path.as_ref();
        let sizes = [self.train, self.val, self.test];
        let bad = |problem: String| DataError::ClassSplit {
            path: path.to_path_buf(),
            found: n,
            requested: self.to_string(),
            problem,
        };
        let fixed = |s: SplitSize| match s {
            SplitSize::Count(k) => k,
            SplitSize::Fraction(x) => (x * n as f64).round() as usize,
            SplitSize::Rest => 0,
        };
        let rests = sizes.iter().filter(|s| **s == SplitSize::Rest).count();
        if rests > 1 {
            return Err(bad("at most one split can be `rest`".into()));
        }
        let taken: usize = sizes.iter().map(|&s| fixed(s)).sum();
        if taken > n {
            return Err(bad(format!(
                "the splits add up to {taken} classes ({} + {} + {})",
                fixed(self.train),
                fixed(self.val),
                fixed(self.test)
            )));
        }
        let counts = sizes.map(|s| match s {
            SplitSize::Rest => n - taken,
            s => fixed(s),
        });
        for (k, name) in [(0, "train"), (2, "test")] {
            if counts[k] == 0 {
                return Err(DataError::EmptySplit {
                    path: path.to_path_buf(),
                    split: name.into(),
                    reason: format!(
                        "{n} classes found; the class split asks for {self}, which gives \
                         {} train, {} validation, {} test",
                        counts[0], counts[1], counts[2]
                    ),
                });
            }
        }
        Ok(counts)
    }

    /// Divides `set`'s classes in order into `[train, val, test]` (see
    /// [`ClassSplit::resolve`]); each part keeps `set`'s source path.
    ///
    /// # Errors
    /// As [`ClassSplit::resolve`].
    pub fn apply(&self, set: &ImageSet) -> Result<Splits, DataError> {
        let counts = self.resolve(set.num_classes(), set.source())?;
        Ok(Splits::by_counts(set, counts))
    }
}

/// A data set divided by class into meta-training, validation and test sets
/// (the validation set may have no classes).
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    /// Meta-training classes.
    pub train: ImageSet,
    /// Validation classes (possibly none).
    pub val: ImageSet,
    /// Test classes.
    pub test: ImageSet,
}

impl Splits {
    /// The first `counts[0]` classes of `set` train, the next `counts[1]`
    /// validate, the next `counts[2]` test.
    ///
    /// # Panics
    /// If the counts add up to more than `set`'s classes.
    #[track_caller]
    pub fn by_counts(set: &ImageSet, counts: [usize; 3]) -> Splits {
        let [tr, va, te] = counts;
        let ids: Vec<usize> = (0..set.num_classes()).collect();
        assert!(
            tr + va + te <= ids.len(),
            "Splits::by_counts: {tr} + {va} + {te} classes of {}",
            ids.len()
        );
        Splits {
            train: set.select_classes(&ids[..tr]),
            val: set.select_classes(&ids[tr..tr + va]),
            test: set.select_classes(&ids[tr + va..tr + va + te]),
        }
    }
}
