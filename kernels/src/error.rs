//! Errors for bad inputs to the kernels, naming the op and the argument at fault.

use candle_core::{DType, Shape};

/// What is wrong with the inputs of a kernel call.
///
/// Public functions return `candle_core::Result` (they compose with other tensor code);
/// these errors are carried inside `candle_core::Error::Wrapped` with their message.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An argument has a shape the op cannot use.
    #[error("{op}: argument `{arg}` has shape {got:?}, expected {expected}")]
    Shape {
        op: &'static str,
        arg: &'static str,
        got: Shape,
        expected: String,
    },
    /// An argument has a dtype the op does not support.
    #[error("{op}: argument `{arg}` has dtype {got:?}, expected {expected}")]
    DType {
        op: &'static str,
        arg: &'static str,
        got: DType,
        expected: &'static str,
    },
    /// An argument's values are out of their valid range.
    #[error("{op}: argument `{arg}`: {reason}")]
    Value {
        op: &'static str,
        arg: &'static str,
        reason: String,
    },
    /// The tensor lives on a device this op has no implementation for yet.
    #[error("{op}: only the CPU device is implemented (argument `{arg}` is on {device})")]
    Device {
        op: &'static str,
        arg: &'static str,
        device: String,
    },
    /// A CUDA step failed (NVRTC compile, module load, launch); `detail` is the driver's or
    /// compiler's own message.
    #[error("CUDA: {what}: {detail}")]
    Cuda { what: String, detail: String },
}

impl From<KernelError> for candle_core::Error {
    fn from(err: KernelError) -> Self {
        candle_core::Error::wrap(err)
    }
}

pub(crate) fn shape_err(
    op: &'static str,
    arg: &'static str,
    got: &Shape,
    expected: impl Into<String>,
) -> candle_core::Error {
    KernelError::Shape {
        op,
        arg,
        got: got.clone(),
        expected: expected.into(),
    }
    .into()
}

pub(crate) fn value_err(
    op: &'static str,
    arg: &'static str,
    reason: impl Into<String>,
) -> candle_core::Error {
    KernelError::Value {
        op,
        arg,
        reason: reason.into(),
    }
    .into()
}
