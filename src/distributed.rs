//! The examples' `--mpi` flag: the communicator of the run.

use blo::comm::{Communicator, Local};

/// The communicator for an example: the MPI job's ranks with `mpi` (the
/// `mpi` cargo feature must be on; start the program with
/// `mpiexec -n N …`), one process otherwise.
///
/// # Errors
/// `--mpi` in a build without the feature, or MPI failing to start.
pub fn communicator(mpi: bool) -> Result<Box<dyn Communicator>, String> {
    if !mpi {
        return Ok(Box::new(Local));
    }
    #[cfg(feature = "mpi")]
    {
        blo::comm::Mpi::init()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .map_err(|e| format!("--mpi: {e}"))
    }
    #[cfg(not(feature = "mpi"))]
    {
        Err("--mpi: this program was built without MPI; rebuild with `--features mpi` \
             (needs an MPI library, e.g. `apt-get install -y mpich libmpich-dev libclang-dev pkgconf`)"
            .into())
    }
}
