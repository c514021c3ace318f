// Fused half-space projection of DHSPG / H2SPG over all active (redundant, non-zero) groups.
//
// One thread block per active group. A group is a list of rows of several float32 tensors;
// tensor t is viewed as (outer, rows, inner) and row r of it holds the elements
// (o*rows + r)*inner + i for o < outer, i < inner. Pass 1 reduces x.d, x.x, d.d in double;
// thread 0 evaluates DHSPG's lambda rule and the half-space test (same formulas as
// otoir/optim/rules.py); pass 2 scales the group's rows in place by 1 - lr*lambda_g/||x|| or
// zeroes them. The caller then takes the base step x -= lr*d on every parameter.
//
// Host entry points return a cudaError_t value (0 = success); no exceptions, no printing.

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;

struct Params {
  const int64_t* x_ptrs;      // [T] float* of each tensor
  const int64_t* d_ptrs;      // [T] float* of each direction (0 = zero direction)
  const int64_t* dims;        // [T*3] outer, rows, inner
  const int64_t* group_row_ptr;  // [G+1] CSR over group rows
  const int64_t* row_tensor;  // [grouped rows] tensor index, rows sorted by group
  const int64_t* row_local;   // [grouped rows] row index inside the tensor
  const int32_t* active;      // [n_active] group ids
  double lr, lam, amplify, hat, epsilon;
  int adaptive, force;
  uint8_t* projected;         // [G] set to 1 for projected groups
};

__device__ inline double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

__global__ void halfspace_kernel(Params p) {
  const int g = p.active[blockIdx.x];
  const int64_t r0 = p.group_row_ptr[g];
  const int64_t r1 = p.group_row_ptr[g + 1];
  __shared__ double red[3][kThreads / 32];
  __shared__ float s_scale;
  __shared__ int s_proj;

  if (!p.force) {
    double xd = 0.0, xx = 0.0, dd = 0.0;
    for (int64_t k = r0; k < r1; ++k) {
      const int64_t t = p.row_tensor[k];
      const int64_t outer = p.dims[3 * t], rows = p.dims[3 * t + 1], inner = p.dims[3 * t + 2];
      const int64_t r = p.row_local[k];
      const float* x = reinterpret_cast<const float*>(p.x_ptrs[t]);
      const float* d = reinterpret_cast<const float*>(p.d_ptrs[t]);
      const int64_t n = outer * inner;
      for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
        const int64_t o = e / inner, i = e - o * inner;
        const int64_t off = (o * rows + r) * inner + i;
        const double xv = x[off];
        const double dv = d ? static_cast<double>(d[off]) : 0.0;
        xd += xv * dv;
        xx += xv * xv;
        dd += dv * dv;
      }
    }
    xd = warp_sum(xd);
    xx = warp_sum(xx);
    dd = warp_sum(dd);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
      red[0][warp] = xd;
      red[1][warp] = xx;
      red[2][warp] = dd;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      xd = xx = dd = 0.0;
      for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
        xd += red[0][w];
        xx += red[1][w];
        dd += red[2][w];
      }
      const double xnorm = sqrt(xx);
      double lam = p.lam;
      if (p.adaptive && xd < 0.0 && xnorm > 0.0) {
        const double low = -xd / xnorm;
        const double up = -dd * xnorm / xd;
        double cand = fmin(fmax(p.amplify * low, p.lam), p.lam * p.hat);
        if (cand >= up) cand = 0.5 * (low + up);
        lam = cand;
      }
      const double c = xnorm > 0.0 ? lam / xnorm : 0.0;
      const double scale = 1.0 - p.lr * c;
      const double dot = scale * xx - p.lr * xd;
      const int proj = (dot < p.epsilon * xx) || (xx <= 0.0);
      s_proj = proj;
      s_scale = proj ? 0.0f : static_cast<float>(scale);
    }
  } else if (threadIdx.x == 0) {
    s_proj = 1;
    s_scale = 0.0f;
  }
  __syncthreads();
  const float scale = s_scale;
  for (int64_t k = r0; k < r1; ++k) {
    const int64_t t = p.row_tensor[k];
    const int64_t outer = p.dims[3 * t], rows = p.dims[3 * t + 1], inner = p.dims[3 * t + 2];
    const int64_t r = p.row_local[k];
    float* x = reinterpret_cast<float*>(p.x_ptrs[t]);
    const int64_t n = outer * inner;
    for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
      const int64_t o = e / inner, i = e - o * inner;
      const int64_t off = (o * rows + r) * inner + i;
      x[off] = s_proj ? 0.0f : x[off] * scale;
    }
  }
  if (threadIdx.x == 0 && s_proj) p.projected[g] = 1;
}

}  // namespace

#define OTOIR_EXPORT __attribute__((visibility("default")))
// ABI version of this library; otoir/kernels/loader.py has the same value (ABI_VERSION, tested).
#define OTOIR_KERNELS_ABI 1

extern "C" {

// Number of CUDA devices; returns the cudaError_t (35 = cudaErrorInsufficientDriver: no driver).
OTOIR_EXPORT int otoir_cuda_device_count(int* count) {
  *count = 0;
  return static_cast<int>(cudaGetDeviceCount(count));
}

// ABI version of this library, checked by the Python loader.
OTOIR_EXPORT int otoir_kernels_abi_version(void) { return OTOIR_KERNELS_ABI; }

// Launches the fused half-space projection on `stream` (a cudaStream_t, 0 = default stream).
// All pointer arguments are device pointers. Returns the launch's cudaError_t.
OTOIR_EXPORT int otoir_halfspace_f32(const int64_t* x_ptrs, const int64_t* d_ptrs, const int64_t* dims,
                        const int64_t* group_row_ptr, const int64_t* row_tensor,
                        const int64_t* row_local, const int32_t* active, int n_active, double lr,
                        double lam, double amplify, double hat, int adaptive, double epsilon,
                        int force, uint8_t* projected, void* stream) {
  if (n_active <= 0) return 0;
  Params p{x_ptrs, d_ptrs, dims, group_row_ptr, row_tensor, row_local, active,
           lr, lam, amplify, hat, epsilon, adaptive, force, projected};
  halfspace_kernel<<<n_active, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // extern "C"
