// One function libtorch's C API (torch-sys) lacks: a CPU tensor over memory that fastcifar owns,
// with a deleter, in a storage that torch may still resize (it then moves the data into memory of
// its own allocator and calls the deleter). See src/host.rs for why.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>

extern "C" at::Tensor* fastcifar_host_tensor(void* data, int64_t nbytes, const int64_t* sizes, int64_t ndim,
                                              int64_t dtype, void* ctx, void (*release)(void*)) {
  // No exception may cross into Rust. `ctx` is always taken: on failure it is released here (by
  // hand before the DataPtr owns it, by the DataPtr's destructor after) and null is returned.
  bool owned = false;
  try {
    auto kind = dtype == 0 ? at::kFloat : at::kByte;
    at::Tensor t = at::empty({0}, at::TensorOptions().dtype(kind));
    c10::DataPtr ptr(data, ctx, release, c10::Device(c10::DeviceType::CPU));
    owned = true;
    c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(ptr), c10::GetCPUAllocator(),
                         /*resizable=*/true);
    t.set_(storage, 0, c10::IntArrayRef(sizes, static_cast<size_t>(ndim)));
    return new at::Tensor(std::move(t));
  } catch (...) {
    if (!owned) release(ctx);
    return nullptr;
  }
}
