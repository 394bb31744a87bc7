// torch's thread-local state for one engine call: grad mode, inference mode and autocast, set by
// C++ guards around a Rust callback, so that every exit path (an error, a panic caught on the Rust
// side, a C++ exception) restores what the caller had. libtorch's C API (torch-sys) has setters
// for CUDA autocast only, and none for inference mode or the autocast dtype.
#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <optional>

namespace {

// Autocast on one device type with one dtype, for the guard's lifetime (as torch.autocast's
// __enter__ / __exit__: the previous state comes back, and the cast cache is cleared when the
// outermost autocast region ends).
struct AutocastGuard {
  at::DeviceType device;
  bool prev_enabled;
  at::ScalarType prev_dtype;
  AutocastGuard(at::DeviceType d, bool enabled, at::ScalarType dtype)
      : device(d), prev_enabled(at::autocast::is_autocast_enabled(d)), prev_dtype(at::autocast::get_autocast_dtype(d)) {
    at::autocast::set_autocast_enabled(d, enabled);
    at::autocast::set_autocast_dtype(d, dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device, prev_enabled);
    at::autocast::set_autocast_dtype(device, prev_dtype);
  }
};

at::DeviceType device_type(int32_t d) { return d == 1 ? at::kCUDA : at::kCPU; }
at::ScalarType scalar_type(int32_t t) { return t == 1 ? at::kHalf : at::kBFloat16; }

}  // namespace

extern "C" {

// Runs `body(ctx)` with grad mode `grad` (0 off, 1 on; on also leaves inference mode, as
// `torch.inference_mode(False)` does) and, when `autocast_device` >= 0 (0 CPU, 1 CUDA), autocast
// there in `autocast_dtype` (0 bfloat16, 1 float16) or explicitly off (`autocast_enabled` 0).
// Returns body's value, or -1 if a C++ exception escaped (the state is restored either way).
// `body` must not unwind: the Rust side catches its panics.
int32_t fastcifar_scoped(int32_t grad, int32_t autocast_device, int32_t autocast_enabled, int32_t autocast_dtype,
                         int32_t (*body)(void*), void* ctx) {
  try {
    std::optional<c10::InferenceMode> inference;
    std::optional<c10::AutoGradMode> grad_mode;
    if (grad) {
      inference.emplace(false);  // grad on, inference mode off
    } else {
      grad_mode.emplace(false);
    }
    std::optional<AutocastGuard> cast;
    if (autocast_device >= 0) {
      cast.emplace(device_type(autocast_device), autocast_enabled != 0, scalar_type(autocast_dtype));
    }
    return body(ctx);
  } catch (...) {
    return -1;
  }
}

// The caller's state, read without changing it.
int32_t fastcifar_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }
int32_t fastcifar_inference_mode() { return c10::InferenceMode::is_enabled() ? 1 : 0; }

// Autocast on `device` (0 CPU, 1 CUDA): -1 off, else its dtype (0 bfloat16, 1 float16, 2 other).
int32_t fastcifar_autocast_state(int32_t device) {
  try {
    auto d = device_type(device);
    if (!at::autocast::is_autocast_enabled(d)) return -1;
    auto t = at::autocast::get_autocast_dtype(d);
    return t == at::kBFloat16 ? 0 : (t == at::kHalf ? 1 : 2);
  } catch (...) {
    return -1;
  }
}

// What the CPU can do natively, as libtorch's cpuinfo reports it: bit 0 avx512_bf16, bit 1 amx_bf16.
int32_t fastcifar_cpu_bf16() {
  try {
    auto caps = at::cpu::get_cpu_capabilities();
    auto flag = [&](const char* k) {
      auto it = caps.find(k);
      return it != caps.end() && it->second.isBool() && it->second.toBool();
    };
    return (flag("avx512_bf16") ? 1 : 0) | (flag("amx_bf16") ? 2 : 0);
  } catch (...) {
    return 0;
  }
}

}  // extern "C"
