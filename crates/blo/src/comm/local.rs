//! [`Local`]: a run of one rank.

use super::{CommError, Communicator};

/// One process, one rank: collectives return this rank's own data.
///
/// ```
/// use blo::comm::{Communicator, Local};
/// assert_eq!((Local.rank(), Local.size()), (0, 1));
/// assert_eq!(Local.all_gather(b"abc").unwrap(), vec![b"abc".to_vec()]);
/// ```
#[derive(Copy, Clone, Debug, Default)]
pub struct Local;

impl Communicator for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        Ok(vec![mine.to_vec()])
    }
    #[track_caller]
    fn broadcast(&self, root: usize, _buf: &mut Vec<u8>) -> Result<(), CommError> {
        assert_eq!(root, 0, "Local::broadcast: root {root} of a single rank");
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
    fn fail(&self, _reason: &str) {}
    fn describe(&self) -> String {
        "local".into()
    }
}
