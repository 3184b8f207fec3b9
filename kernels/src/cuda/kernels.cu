// kubeswift's CUDA kernels, compiled at run time with NVRTC for the GPU that runs them
// (kernels/src/cuda/mod.rs). Every kernel has a CPU twin in kernels/src/ops/ that defines
// what it computes; gpu tests compare the two on the same inputs.
//
// Storage types are f32, bf16 and f16; arithmetic is always f32 (bf16/f16 are storage
// only, as on the CPU). No CUDA headers are included: NVRTC then needs no include path, so
// the same source compiles on a CPU-only build machine (the NVRTC test) and on any GPU host.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

struct bf16_t { u16 bits; };
struct f16_t { u16 bits; };

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(bf16_t v) { return __uint_as_float(((u32)v.bits) << 16); }
__device__ __forceinline__ float load(f16_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

template <typename T> __device__ __forceinline__ T store(float v);
template <> __device__ __forceinline__ float store<float>(float v) { return v; }
// Round to nearest even, as half::bf16::from_f32 does on the CPU; NaN stays a (quiet) NaN.
template <> __device__ __forceinline__ bf16_t store<bf16_t>(float v) {
    u32 x = __float_as_uint(v);
    bf16_t out;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        out.bits = (u16)((x >> 16) | 0x0040u);
    } else {
        out.bits = (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    }
    return out;
}
template <> __device__ __forceinline__ f16_t store<f16_t>(float v) {
    f16_t out;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(v));
    return out;
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? partial[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, one block per row ----------------------

template <typename T>
__device__ void rms_norm_fwd(const T* x, const float* w, T* y, u32 d, float eps) {
    const T* xr = x + (u64)blockIdx.x * d;
    T* yr = y + (u64)blockIdx.x * d;
    float ss = 0.f;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) { float v = load(xr[i]); ss += v * v; }
    const float inv = rsqrtf(block_sum(ss) / (float)d + eps);
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) yr[i] = store<T>(load(xr[i]) * inv * w[i]);
}

// With r = inv_rms(x), n = x r: dx = r (w g - n mean(w g n)), dw += g n (atomically, f32).
template <typename T, typename G>
__device__ void rms_norm_bwd(const T* x, const float* w, const G* g, T* dx, float* dw,
                             u32 d, float eps) {
    const T* xr = x + (u64)blockIdx.x * d;
    const G* gr = g + (u64)blockIdx.x * d;
    float ss = 0.f, dot = 0.f;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) {
        const float xv = load(xr[i]);
        ss += xv * xv;
        dot += w[i] * load(gr[i]) * xv;
    }
    const float inv = rsqrtf(block_sum(ss) / (float)d + eps);
    const float mean = block_sum(dot) * inv / (float)d;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) {
        const float xv = load(xr[i]), gv = load(gr[i]);
        if (dx) dx[(u64)blockIdx.x * d + i] = store<T>(inv * (w[i] * gv - xv * inv * mean));
        if (dw) atomicAdd(&dw[i], gv * xv * inv);
    }
}

// ---- silu(gate) * up ---------------------------------------------------------------------

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

template <typename T>
__device__ void silu_mul_fwd(const T* gate, const T* up, T* out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = load(gate[i]);
        out[i] = store<T>(g * sigmoid(g) * load(up[i]));
    }
}

// d/dg silu(g) = s (1 + g (1 - s)) with s = sigmoid(g).
template <typename T, typename G>
__device__ void silu_mul_bwd(const T* gate, const T* up, const G* grad, T* dgate, T* dup, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = load(gate[i]), u = load(up[i]), dy = load(grad[i]);
        const float s = sigmoid(g);
        dgate[i] = store<T>(dy * u * s * (1.f + g * (1.f - s)));
        dup[i] = store<T>(dy * g * s);
    }
}

// ---- rotary embedding, half rotation, x contiguous [b, h, t, d] --------------------------
// cos/sin: f32 [tokens, d/2], the table rows already gathered at each token's position,
// tokens = b*t (per-batch positions) or t (shared). sign = +1 forward, -1 backward (the
// transpose of a rotation is the rotation by the opposite angle).

template <typename T, typename G>
__device__ void rope_apply(const G* x, const float* cos, const float* sin, T* y, u32 b, u32 h,
                           u32 t, u32 d, u32 per_batch, float sign) {
    const u32 half = d / 2;
    const u64 n = (u64)b * h * t * half;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u32 j = (u32)(i % half);
        const u64 row = i / half;  // (bi, hi, ti) flattened
        const u32 ti = (u32)(row % t);
        const u32 bi = (u32)(row / ((u64)h * t));
        const u64 tok = per_batch ? (u64)bi * t + ti : ti;
        const float c = cos[tok * half + j], s = sign * sin[tok * half + j];
        const float x1 = load(x[row * d + j]), x2 = load(x[row * d + half + j]);
        y[row * d + j] = store<T>(x1 * c - x2 * s);
        y[row * d + half + j] = store<T>(x2 * c + x1 * s);
    }
}

// ---- AdamW on f32 master weights (torch.optim.AdamW / HF semantics) ----------------------
// p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
// p <- p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps), bc_i = 1 - beta_i^step.

template <typename G>
__device__ void adamw_step(float* p, const G* grad, float* m, float* v, u64 n, float lr,
                           float beta1, float beta2, float eps, float weight_decay, float bc1,
                           float bc2, float grad_scale) {
    const float step_size = lr / bc1, sqrt_bc2 = sqrtf(bc2);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = load(grad[i]) * grad_scale;
        float pv = p[i] * (1.f - lr * weight_decay);
        const float mv = beta1 * m[i] + (1.f - beta1) * g;
        const float vv = beta2 * v[i] + (1.f - beta2) * g * g;
        pv -= step_size * mv / (sqrtf(vv) / sqrt_bc2 + eps);
        p[i] = pv; m[i] = mv; v[i] = vv;
    }
}

// The master weights rounded into the model's copy (bf16/f16 models train on f32 masters).
template <typename T>
__device__ void cast_from_f32(const float* src, T* dst, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = store<T>(src[i]);
}

// ---- extern "C" entry points, one per storage type (suffix = candle's dtype name) --------

#define FOR_TYPE(T, S)                                                                          \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const float* w, T* y, u32 d,        \
                                               float eps) {                                     \
        rms_norm_fwd<T>(x, w, y, d, eps);                                                      \
    }                                                                                           \
    extern "C" __global__ void rms_norm_bwd_##S(const T* x, const float* w, const T* g, T* dx,  \
                                               float* dw, u32 d, float eps) {                   \
        rms_norm_bwd<T, T>(x, w, g, dx, dw, d, eps);                                           \
    }                                                                                           \
    extern "C" __global__ void silu_mul_fwd_##S(const T* gate, const T* up, T* out, u64 n) {    \
        silu_mul_fwd<T>(gate, up, out, n);                                                     \
    }                                                                                           \
    extern "C" __global__ void silu_mul_bwd_##S(const T* gate, const T* up, const T* grad,      \
                                               T* dgate, T* dup, u64 n) {                       \
        silu_mul_bwd<T, T>(gate, up, grad, dgate, dup, n);                                     \
    }                                                                                           \
    extern "C" __global__ void rope_##S(const T* x, const float* cos, const float* sin, T* y,   \
                                       u32 b, u32 h, u32 t, u32 d, u32 per_batch, float sign) { \
        rope_apply<T, T>(x, cos, sin, y, b, h, t, d, per_batch, sign);                         \
    }                                                                                           \
    extern "C" __global__ void adamw_step_##S(float* p, const T* grad, float* m, float* v,      \
                                             u64 n, float lr, float beta1, float beta2,         \
                                             float eps, float weight_decay, float bc1,          \
                                             float bc2, float grad_scale) {                     \
        adamw_step<T>(p, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2,         \
                      grad_scale);                                                              \
    }                                                                                           \
    extern "C" __global__ void cast_from_f32_##S(const float* src, T* dst, u64 n) {             \
        cast_from_f32<T>(src, dst, n);                                                         \
    }

FOR_TYPE(float, f32)
FOR_TYPE(bf16_t, bf16)
FOR_TYPE(f16_t, f16)
