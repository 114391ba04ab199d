//! MAML configs (`maml_sine:rR:MODE`, `maml_conv4:rR:MODE`): filled in once the
//! `blo` estimators and `models` land.

use crate::Bench;

/// The MAML config names this runner knows.
pub(crate) fn configs() -> Vec<String> {
    Vec::new()
}

/// The workload for a MAML config, or `None` if unknown.
pub(crate) fn workload(_config: &str) -> Option<Box<dyn Bench>> {
    None
}
