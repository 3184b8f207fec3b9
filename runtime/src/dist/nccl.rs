//! NCCL behind the [`Collective`] trait: `--ddp_backend nccl` in the `cuda` build.
//!
//! The optimizer keeps its master weights and gradients on the host (`train/optimizer.rs`),
//! so each collective copies the host buffer to this worker's GPU, runs NCCL there (NVLink
//! and InfiniBand instead of the CPU ring's TCP), and copies the result back.
//!
//! NCCL itself waits forever for a peer that died, the hang ms-swift users report most.
//! Here every collective is enqueued and then polled: the stream's completion, NCCL's
//! asynchronous error, and the rendezvous store's abort key (rank 0's store records which
//! rank was lost when that rank's connection drops). As soon as the store names a lost
//! rank, or at `--ddp_timeout`, the communicator is aborted (`ncclCommAbort` releases the
//! stuck kernels) and the error says which rank and which operation. Communicator setup
//! runs on its own thread for the same reason: it blocks until every rank joined.
//!
//! Barriers and gathers go through the store, as with the ring.

use std::ffi::{CStr, c_char};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, DriverError, ValidAsZeroBits,
};
use cudarc::nccl::{NcclType, result, sys};

use super::collective::{Collective, store_gather};
use super::error::DistError;
use super::store::{ABORT_KEY, Store};

/// The store key under which rank 0 publishes the communicator's unique id.
const ID_KEY: &str = "nccl/id";
/// How often a waiting collective asks the store whether a rank was lost.
const STORE_POLL: Duration = Duration::from_millis(100);

/// Whether libnccl can be loaded (asked before any NCCL call: cudarc's loader panics
/// when the library is missing).
pub fn library_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// The unique id as hex: store values are strings.
pub fn encode_id(id: &[c_char; 128]) -> String {
    hex::encode(id.map(|c| c as u8))
}

/// The inverse of [`encode_id`]; `None` for anything but 128 hex-encoded bytes.
pub fn decode_id(text: &str) -> Option<[c_char; 128]> {
    let bytes = hex::decode(text.trim()).ok()?;
    let bytes: [u8; 128] = bytes.try_into().ok()?;
    Some(bytes.map(|b| b as c_char))
}

/// A communicator handle; aborted (never destroyed, which could wait on a dead peer)
/// when dropped.
struct RawComm(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be used from any thread, one at a time; `Nccl` owns it.
unsafe impl Send for RawComm {}

impl RawComm {
    fn abort(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a communicator made by ncclCommInitRank, aborted once.
            let _ = unsafe { result::comm_abort(self.0) };
            self.0 = std::ptr::null_mut();
        }
    }
}

impl Drop for RawComm {
    fn drop(&mut self) {
        self.abort();
    }
}

/// NCCL's words for a result code.
fn nccl_message(code: sys::ncclResult_t) -> String {
    // SAFETY: NCCL returns a static, NUL-terminated string for every code.
    let text = unsafe { sys::ncclGetErrorString(code) };
    if text.is_null() {
        format!("{code:?}")
    } else {
        // SAFETY: checked non-null above; NCCL's strings are static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

/// One rank's NCCL communicator.
pub struct Nccl {
    rank: usize,
    world_size: usize,
    comm: RawComm,
    stream: Arc<CudaStream>,
    store: Store,
    timeout: Duration,
    barriers: u64,
    /// The gradient buffer on the GPU, kept between steps (its size never changes).
    grads: Option<CudaSlice<f32>>,
}

impl Nccl {
    /// Builds the communicator on GPU `ordinal`: rank 0 makes the unique id and publishes it
    /// in the store; every rank then joins within `deadline`.
    pub fn connect(
        store: Store,
        rank: usize,
        world_size: usize,
        ordinal: usize,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Self, DistError> {
        let setup = |detail: String| DistError::Nccl {
            rank,
            op: "communicator setup".into(),
            detail,
        };
        let context = CudaContext::new(ordinal)
            .map_err(|e| setup(format!("opening CUDA device {ordinal}: {e}")))?;
        let stream = context
            .new_stream()
            .map_err(|e| setup(format!("creating a CUDA stream: {e}")))?;
        let id = if rank == 0 {
            let id = result::get_uniqueid().map_err(|e| setup(nccl_message(e.0)))?;
            store.set(ID_KEY, &encode_id(&id.internal))?;
            id.internal
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            let text = store.get(ID_KEY, left)?.ok_or(DistError::Missing {
                what: "the NCCL unique id from rank 0".into(),
                missing: vec![0],
                world_size,
                waited: left,
            })?;
            decode_id(&text)
                .ok_or_else(|| setup(format!("rank 0 published a malformed id {text:?}")))?
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let init_context = context.clone();
        std::thread::Builder::new()
            .name("nccl-init".into())
            .spawn(move || {
                let made = init_context.bind_to_thread().map_err(|e| e.to_string());
                let made = made.and_then(|()| {
                    let mut comm: sys::ncclComm_t = std::ptr::null_mut();
                    // SAFETY: `comm` is written by NCCL; the id came from ncclGetUniqueId.
                    unsafe {
                        result::comm_init_rank(
                            &mut comm,
                            world_size as i32,
                            sys::ncclUniqueId { internal: id },
                            rank as i32,
                        )
                    }
                    .map(|_| RawComm(comm))
                    .map_err(|e| nccl_message(e.0))
                });
                let _ = tx.send(made);
            })
            .map_err(|e| setup(e.to_string()))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let comm = match rx.recv_timeout(left) {
            Ok(Ok(comm)) => comm,
            Ok(Err(detail)) => return Err(setup(detail)),
            // The setup thread stays blocked in NCCL; the process is about to exit with
            // this error, which is what ends it.
            Err(_) => {
                return Err(DistError::Missing {
                    what: format!("NCCL communicator setup (rank {rank} waited)"),
                    missing: (0..world_size).filter(|&r| r != rank).collect(),
                    world_size,
                    waited: left,
                });
            }
        };
        tracing::info!(
            rank,
            world_size,
            ordinal,
            version = result::get_nccl_version().unwrap_or_default(),
            "NCCL communicator ready"
        );
        Ok(Nccl {
            rank,
            world_size,
            comm,
            stream,
            store,
            timeout,
            barriers: 0,
            grads: None,
        })
    }

    fn cuda_error(&self, op: &str, e: DriverError) -> DistError {
        DistError::Nccl {
            rank: self.rank,
            op: op.into(),
            detail: format!("CUDA: {e}"),
        }
    }

    /// Records this failure as the job's cause unless another rank was first, aborts the
    /// communicator, and reports the first cause.
    fn fail(&mut self, op: &str, err: DistError) -> DistError {
        let mine = err.to_string();
        let first = self.store.set_if_absent(ABORT_KEY, &mine);
        self.comm.abort();
        match first {
            Ok(cause) if cause != mine => DistError::Aborted {
                rank: self.rank,
                op: op.into(),
                cause,
            },
            _ => err,
        }
    }

    /// Waits for the stream's work, watching NCCL's error state, the store's abort key and
    /// the timeout; aborts the communicator on any of them.
    fn wait(&mut self, op: &str) -> Result<(), DistError> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| self.cuda_error(op, e))?;
        let start = Instant::now();
        let mut next_store_check = start + STORE_POLL;
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    let err = self.cuda_error(op, e);
                    return Err(self.fail(op, err));
                }
            }
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator; `state` is written by NCCL.
            unsafe { sys::ncclCommGetAsyncError(self.comm.0, &mut state) };
            if !matches!(
                state,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            ) {
                let err = DistError::Nccl {
                    rank: self.rank,
                    op: op.into(),
                    detail: nccl_message(state),
                };
                return Err(self.fail(op, err));
            }
            let now = Instant::now();
            if now >= next_store_check {
                next_store_check = now + STORE_POLL;
                match self.store.get(ABORT_KEY, Duration::ZERO) {
                    Ok(None) => {}
                    Ok(Some(cause)) | Err(DistError::Aborted { cause, .. }) => {
                        self.comm.abort();
                        return Err(DistError::Aborted {
                            rank: self.rank,
                            op: op.into(),
                            cause,
                        });
                    }
                    // Rank 0 (the store) is gone.
                    Err(err) => {
                        self.comm.abort();
                        return Err(err);
                    }
                }
            }
            if now.duration_since(start) >= self.timeout {
                let err = DistError::Stalled {
                    rank: self.rank,
                    op: format!("NCCL {op}"),
                    waited: self.timeout,
                };
                return Err(self.fail(op, err));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Runs `launch` on a device copy of `buf` and copies the result back.
    fn on_device<T>(
        &mut self,
        op: &str,
        buf: &mut [T],
        reuse: Option<CudaSlice<T>>,
        launch: impl FnOnce(
            sys::ncclComm_t,
            sys::cudaStream_t,
            *mut std::ffi::c_void,
            usize,
        ) -> Result<result::NcclStatus, result::NcclError>,
    ) -> Result<Option<CudaSlice<T>>, DistError>
    where
        T: DeviceRepr + ValidAsZeroBits + NcclType,
    {
        if buf.is_empty() {
            return Ok(reuse);
        }
        let mut device = match reuse {
            Some(d) if d.len() == buf.len() => d,
            _ => self
                .stream
                .alloc_zeros::<T>(buf.len())
                .map_err(|e| self.cuda_error(op, e))?,
        };
        self.stream
            .memcpy_htod(buf, &mut device)
            .map_err(|e| self.cuda_error(op, e))?;
        let launched = {
            let (ptr, _record) = device.device_ptr_mut(&self.stream);
            launch(
                self.comm.0,
                self.stream.cu_stream() as sys::cudaStream_t,
                ptr as *mut std::ffi::c_void,
                buf.len(),
            )
        };
        if let Err(e) = launched {
            let err = DistError::Nccl {
                rank: self.rank,
                op: op.into(),
                detail: nccl_message(e.0),
            };
            return Err(self.fail(op, err));
        }
        self.wait(op)?;
        self.stream
            .memcpy_dtoh(&device, buf)
            .map_err(|e| self.cuda_error(op, e))?;
        self.stream
            .synchronize()
            .map_err(|e| self.cuda_error(op, e))?;
        Ok(Some(device))
    }

    fn all_reduce<T>(
        &mut self,
        buf: &mut [T],
        reuse: Option<CudaSlice<T>>,
    ) -> Result<Option<CudaSlice<T>>, DistError>
    where
        T: DeviceRepr + ValidAsZeroBits + NcclType,
    {
        self.on_device("all_reduce", buf, reuse, |comm, stream, ptr, len| {
            // SAFETY: `ptr` is `len` elements of T on this communicator's device.
            unsafe {
                result::all_reduce(
                    ptr,
                    ptr,
                    len,
                    T::as_nccl_type(),
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), DistError> {
        let reuse = self.grads.take();
        self.grads = self.all_reduce(buf, reuse)?;
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<(), DistError> {
        self.all_reduce(buf, None).map(drop)
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), DistError> {
        let reuse = self.grads.take();
        self.grads = self.on_device("broadcast", buf, reuse, |comm, stream, ptr, len| {
            // SAFETY: as in all_reduce; in place on every rank.
            unsafe {
                result::broadcast(
                    ptr,
                    ptr,
                    len,
                    f32::as_nccl_type(),
                    root as i32,
                    comm,
                    stream,
                )
            }
        })?;
        Ok(())
    }

    fn barrier(&mut self, name: &str) -> Result<(), DistError> {
        self.barriers += 1;
        self.store
            .barrier(&format!("{name}#{}", self.barriers), self.timeout)
    }

    fn gather(&mut self, name: &str, value: String) -> Result<Option<Vec<String>>, DistError> {
        store_gather(
            &self.store,
            self.rank,
            self.world_size,
            self.timeout,
            name,
            value,
        )
    }

    fn finish(&mut self) {
        self.store.bye();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_travel_through_the_store_as_hex() {
        let mut id = [0 as c_char; 128];
        for (i, c) in id.iter_mut().enumerate() {
            *c = (i as i32 * 37 - 128) as c_char;
        }
        let text = encode_id(&id);
        assert_eq!(text.len(), 256);
        assert_eq!(decode_id(&text), Some(id));
        assert_eq!(decode_id(&text[..254]), None, "short id");
        assert_eq!(decode_id("zz"), None, "not hex");
    }

    /// NCCL on one GPU with a one-rank communicator: setup, all-reduce, broadcast and the
    /// completion polling (GPU hosts: `scripts/gpu-check.sh`).
    #[test]
    #[ignore = "needs an NVIDIA GPU and libnccl"]
    fn one_rank_communicator_reduces_and_broadcasts_on_the_gpu() {
        assert!(library_present(), "libnccl not found on the library path");
        let store = Store::host("127.0.0.1:0", 1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut nccl = Nccl::connect(store, 0, 1, 0, Duration::from_secs(60), deadline).unwrap();
        let mut grads: Vec<f32> = (0..1_000_003).map(|i| i as f32 * 0.5).collect();
        let want = grads.clone();
        nccl.all_reduce_sum(&mut grads).unwrap();
        assert_eq!(grads, want, "a one-rank sum is the identity");
        let mut stats = vec![1.5f64, 2.0, 3.0];
        nccl.all_reduce_sum_f64(&mut stats).unwrap();
        assert_eq!(stats, vec![1.5, 2.0, 3.0]);
        nccl.broadcast(&mut grads, 0).unwrap();
        assert_eq!(grads, want);
        nccl.finish();
    }
}
