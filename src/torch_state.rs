//! torch's thread-local state (grad mode, inference mode, autocast) as one engine call needs it,
//! restored on every exit path. The state belongs to the caller: a user's `torch.no_grad()` or
//! `torch.autocast` around `fit` must be as it was afterwards, after an error and after a panic
//! too. tch's own `no_grad` / `autocast` restore only when their closure returns normally, and
//! torch-sys can set neither inference mode nor CPU autocast, so the guards live in C++
//! (`csrc/torch_state.cpp`) around a Rust callback that never unwinds into them.
use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use tch::{Device, Kind};

use crate::error::{Error, Result};

extern "C" {
    fn fastcifar_scoped(
        grad: i32,
        autocast_device: i32,
        autocast_enabled: i32,
        autocast_dtype: i32,
        body: extern "C" fn(*mut c_void) -> i32,
        ctx: *mut c_void,
    ) -> i32;
    fn fastcifar_grad_enabled() -> i32;
    fn fastcifar_inference_mode() -> i32;
    fn fastcifar_autocast_state(device: i32) -> i32;
    fn fastcifar_cpu_bf16() -> i32;
}

/// Autocast for a scope: on `device` in `dtype` (BFloat16 or Half), or explicitly off there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autocast {
    pub device: Device,
    pub dtype: Option<Kind>,
}

/// The state one engine call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Gradients recorded (and inference mode left), or not.
    pub grad: bool,
    /// None keeps the caller's autocast state.
    pub autocast: Option<Autocast>,
}

impl Scope {
    pub fn train(autocast: Option<Autocast>) -> Scope {
        Scope { grad: true, autocast }
    }
    pub fn inference(autocast: Option<Autocast>) -> Scope {
        Scope { grad: false, autocast }
    }
}

fn device_code(d: Device) -> i32 {
    i32::from(d.is_cuda())
}

/// Runs `f` under `scope`; the caller's grad mode, inference mode and autocast come back however
/// `f` ends. A panic in `f` is carried across the C++ frames (never unwound through them) and
/// resumed here.
pub fn scoped<T, F: FnOnce() -> T>(scope: Scope, f: F) -> T {
    struct Ctx<F, T> {
        f: Option<F>,
        out: Option<std::thread::Result<T>>,
    }
    extern "C" fn body<G: FnOnce() -> U, U>(ctx: *mut c_void) -> i32 {
        // SAFETY: `ctx` is the `Ctx<G, U>` that `scoped` passed and keeps alive for this call.
        let ctx = unsafe { &mut *ctx.cast::<Ctx<G, U>>() };
        if let Some(f) = ctx.f.take() {
            ctx.out = Some(catch_unwind(AssertUnwindSafe(f)));
        }
        0
    }
    let mut ctx: Ctx<F, T> = Ctx { f: Some(f), out: None };
    let (dev, enabled, dtype) = match scope.autocast {
        None => (-1, 0, 0),
        Some(a) => (
            device_code(a.device),
            i32::from(a.dtype.is_some()),
            i32::from(a.dtype == Some(Kind::Half)),
        ),
    };
    // SAFETY: `body::<F, T>` matches the callback type and reads only `ctx`, which outlives the call;
    // it catches every panic, so nothing unwinds through the C++ frames.
    unsafe {
        fastcifar_scoped(
            i32::from(scope.grad),
            dev,
            enabled,
            dtype,
            body::<F, T>,
            (&mut ctx as *mut Ctx<F, T>).cast(),
        )
    };
    match ctx.out {
        Some(Ok(v)) => v,
        Some(Err(panic)) => resume_unwind(panic),
        // Only a C++ exception before the body ran (setting the state failed) gets here.
        None => resume_unwind(Box::new("fastcifar: could not set torch's grad / autocast state")),
    }
}

/// `f` without gradient recording; the mode comes back on every exit path (tch's `no_grad`
/// restores it only on a normal return).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = tch::no_grad_guard();
    f()
}

/// The calling thread's grad mode and inference mode.
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { fastcifar_grad_enabled() != 0 }
}

pub fn inference_mode() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { fastcifar_inference_mode() != 0 }
}

/// The dtype of the caller's own autocast on `device` (a `torch.autocast` around the call), if on.
pub fn user_autocast(device: Device) -> Option<Kind> {
    // SAFETY: reads thread-local state; catches every C++ exception.
    match unsafe { fastcifar_autocast_state(device_code(device)) } {
        0 => Some(Kind::BFloat16),
        1 => Some(Kind::Half),
        2 => Some(Kind::Float),
        _ => None,
    }
}

/// Native bf16 arithmetic on this CPU, as libtorch's cpuinfo reports it: the feature's name
/// (AMX or AVX512-BF16), or None. Without it, bf16 convolutions are emulated and many times
/// slower than float32 (pytorch#183815). `FASTCIFAR_CPU_BF16=0` answers None (tests use it to
/// take the path of a CPU without bf16).
pub fn cpu_native_bf16() -> Option<&'static str> {
    if std::env::var("FASTCIFAR_CPU_BF16").as_deref() == Ok("0") {
        return None;
    }
    // SAFETY: reads cpuinfo's feature table; catches every C++ exception.
    let bits = unsafe { fastcifar_cpu_bf16() };
    if bits & 2 != 0 {
        Some("amx_bf16")
    } else if bits & 1 != 0 {
        Some("avx512_bf16")
    } else {
        None
    }
}

/// Mixed precision as asked for: `Auto` (amp=True) picks the device's fast dtype; `Bf16` / `Fp16`
/// are exact requests, honoured or refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Amp {
    #[default]
    Off,
    Auto,
    Bf16,
    Fp16,
}

impl Amp {
    pub fn parse(s: &str) -> Result<Amp> {
        Ok(match s {
            "off" | "false" | "fp32" | "float32" => Amp::Off,
            "auto" | "true" => Amp::Auto,
            "bf16" | "bfloat16" => Amp::Bf16,
            "fp16" | "float16" | "half" => Amp::Fp16,
            other => {
                return Err(Error::invalid(
                    "amp",
                    format!("'{other}' is not one of True, False, 'bf16', 'fp16'"),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Amp::Off => "off",
            Amp::Auto => "auto",
            Amp::Bf16 => "bf16",
            Amp::Fp16 => "fp16",
        }
    }

    /// The autocast dtype on `device`, and a note when `Auto` falls back to float32 (the caller
    /// warns with it). Refuses what the device cannot do as asked.
    pub fn resolve(self, device: Device) -> Result<(Option<Kind>, Option<String>)> {
        match (self, device.is_cuda()) {
            (Amp::Off, _) => Ok((None, None)),
            // torch.autocast('cuda')'s default, with GradScaler's loss scaling.
            (Amp::Auto | Amp::Fp16, true) => Ok((Some(Kind::Half), None)),
            (Amp::Bf16, true) => Ok((Some(Kind::BFloat16), None)),
            (Amp::Fp16, false) => Err(Error::invalid(
                "amp",
                "'fp16' needs CUDA: CPUs have no fast float16 convolutions, and torch's CPU autocast uses bfloat16; pass amp='bf16' (or amp=True, which picks it where the CPU has native bf16)",
            )),
            (Amp::Bf16, false) => Ok((Some(Kind::BFloat16), None)),
            (Amp::Auto, false) => Ok(match cpu_native_bf16() {
                Some(_) => (Some(Kind::BFloat16), None),
                None => (
                    None,
                    Some(
                        "amp=True on this CPU trains in float32: it has neither avx512_bf16 nor amx_bf16, and emulated bfloat16 is many times slower (pass amp='bf16' to use it anyway)"
                            .to_string(),
                    ),
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn scoped_restores_the_callers_state_after_a_panic() {
        let _off = tch::no_grad_guard();
        assert!(!grad_enabled());
        let r = catch_unwind(|| {
            scoped(
                Scope::train(Some(Autocast {
                    device: Device::Cpu,
                    dtype: Some(Kind::BFloat16),
                })),
                || {
                    assert!(grad_enabled());
                    assert_eq!(user_autocast(Device::Cpu), Some(Kind::BFloat16));
                    panic!("boom")
                },
            )
        });
        assert!(r.is_err());
        assert!(!grad_enabled(), "grad mode is the caller's again");
        assert_eq!(user_autocast(Device::Cpu), None, "autocast is off again");
    }

    #[test]
    fn cpu_autocast_runs_linear_in_bf16() {
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
        let y = scoped(
            Scope::inference(Some(Autocast {
                device: Device::Cpu,
                dtype: Some(Kind::BFloat16),
            })),
            || x.linear(&w, None::<&Tensor>),
        );
        assert_eq!(y.kind(), Kind::BFloat16);
        assert_eq!(x.linear(&w, None::<&Tensor>).kind(), Kind::Float);
    }

    #[test]
    fn amp_requests_resolve_by_device() {
        assert_eq!(Amp::Off.resolve(Device::Cpu).unwrap(), (None, None));
        assert!(Amp::Fp16
            .resolve(Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("needs CUDA"));
        assert_eq!(Amp::Bf16.resolve(Device::Cpu).unwrap().0, Some(Kind::BFloat16));
        assert_eq!(Amp::Fp16.resolve(Device::Cuda(0)).unwrap().0, Some(Kind::Half));
        assert!(Amp::parse("fp8").is_err());
    }
}
