//! Error types: [`ParamsError`] for parameter files, [`DataError`] for data sets,
//! [`BatchError`] for episodes that cannot be stacked into one batch.
//!
//! Every variant carries the evidence: the file or folder, the tensor's name,
//! what was expected and what was found.

use std::path::PathBuf;

/// A parameter file could not be written or did not match the model.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// The file's content hash (see [`crate::params::CONTENT_HASH_KEY`]) does not
    /// match its tensors: the file was altered or damaged after it was written.
    #[error(
        "{path}: content hash mismatch (stored {stored}, computed {computed}): the file is damaged"
    )]
    ContentMismatch {
        /// The file.
        path: PathBuf,
        /// The hash in the file's metadata.
        stored: String,
        /// The hash of the tensors as read.
        computed: String,
    },
    /// The file carries no content hash, so damage to its data could not be
    /// detected. Files written by another program (or before hashes were added)
    /// can be read with [`crate::Params::load_like_unverified`].
    #[error("{path}: no content hash in the metadata (key `{key}`), so its data cannot be verified; if the file comes from another program or an older version, load it with `Params::load_like_unverified`", key = crate::params::CONTENT_HASH_KEY)]
    Unverified {
        /// The file.
        path: PathBuf,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: tensor `{name}` is missing (the file has {available:?})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The names the file does hold.
        available: Vec<String>,
    },
    /// A tensor has a different shape in the file than in the model.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The file's shape.
        found: Vec<usize>,
    },
    /// A tensor has a different element type in the file than requested.
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The requested dtype (`F32` or `F64`).
        expected: String,
        /// The file's dtype.
        found: String,
    },
}

/// A data set on disk (or a request on a data set) is not usable.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A folder or file that must exist does not.
    #[error("{path}: not found ({what})")]
    Missing {
        /// The path.
        path: PathBuf,
        /// What was being looked for, e.g. "Omniglot root folder".
        what: String,
    },
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded.
    #[error("{path}: unreadable image: {reason}")]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// An image has the wrong size.
    #[error("{path}: image is {found_w}×{found_h}, expected {expected_w}×{expected_h}")]
    WrongImageSize {
        /// The image file.
        path: PathBuf,
        /// Expected width.
        expected_w: usize,
        /// Expected height.
        expected_h: usize,
        /// Found width.
        found_w: usize,
        /// Found height.
        found_h: usize,
    },
    /// An image has a colour type the data set never has (e.g. RGB where
    /// Omniglot's grayscale is expected, or an alpha channel the loader would drop).
    #[error("{path}: image has {found}, expected {expected}")]
    WrongColorType {
        /// The image file.
        path: PathBuf,
        /// What the loader accepts, e.g. "grayscale".
        expected: String,
        /// What the file holds, e.g. "RGB".
        found: String,
    },
    /// A folder holds an entry of the wrong kind: a directory where an image
    /// should be, a file that is not a PNG, a file where a folder should be.
    #[error("{path}: unexpected {found}; expected {expected}")]
    UnexpectedEntry {
        /// The entry.
        path: PathBuf,
        /// What the layout has at this place, e.g. "a PNG file".
        expected: String,
        /// What was found, e.g. "directory".
        found: String,
    },
    /// A file or folder name is not valid UTF-8 (class names come from folder
    /// names, and a lossy conversion could merge two classes).
    #[error("{path}: the name is not valid UTF-8")]
    NonUtf8Name {
        /// The entry (printed lossily).
        path: PathBuf,
    },
    /// A split file (CSV) has a malformed line.
    #[error("{path}:{line}: {reason}")]
    BadSplitFile {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A split (or a whole data set) has no classes or no images.
    #[error("{path}: empty split `{split}`: {reason}")]
    EmptySplit {
        /// The folder or file the split came from.
        path: PathBuf,
        /// The split's name.
        split: String,
        /// What is empty.
        reason: String,
    },
    /// A class split ([`crate::ClassSplit`]) does not fit the classes found:
    /// its sizes add up to more, or more than one is `rest`.
    #[error("{path}: {found} classes found, but the class split asks for {requested}: {problem}")]
    ClassSplit {
        /// The data set.
        path: PathBuf,
        /// Classes found.
        found: usize,
        /// The split asked for (`train 5, validation 0, test rest`).
        requested: String,
        /// What does not fit.
        problem: String,
    },
    /// A class has fewer examples than an episode needs.
    #[error("class `{class}` ({path}) has {have} examples, but an episode needs {need} (K support + Q query)")]
    TooFewExamples {
        /// The class name.
        class: String,
        /// Where the class came from.
        path: PathBuf,
        /// Examples available.
        have: usize,
        /// Examples needed.
        need: usize,
    },
    /// The set has fewer classes than an episode needs.
    #[error("{path}: {have} classes, but an episode needs {need} (N-way)")]
    TooFewClasses {
        /// Where the set came from.
        path: PathBuf,
        /// Classes available.
        have: usize,
        /// Classes needed.
        need: usize,
    },
}

/// Episodes that cannot be stacked into one batch of tasks
/// ([`crate::RegressionChunk`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// No episode was given, or a chunk size of zero was asked for.
    #[error("cannot stack tasks: {0}")]
    Empty(&'static str),
    /// An episode's tensor has another shape than the first episode's.
    #[error("episode {episode}: {what} has shape {found:?}, episode 0 has {expected:?} (every task of a batch needs the same shapes)")]
    ShapeMismatch {
        /// The index of the offending episode in the given slice.
        episode: usize,
        /// Which tensor (`support_x`, `support_y`, `query_x`, `query_y`).
        what: &'static str,
        /// Episode 0's shape.
        expected: Vec<usize>,
        /// The offending episode's shape.
        found: Vec<usize>,
    },
}
