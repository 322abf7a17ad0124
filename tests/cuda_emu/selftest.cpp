// Checks of the emulator itself (run by tests/kernels/test_cuda_emulator.py): each mode prints one
// line of results; the Python side compares them with independent expectations.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "xemu.h"

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// lanes exit right after their last shuffle; the others must still read what they passed
__global__ void k_shuffles(float* out, int T) {
  const int lane = threadIdx.x & 31;
  float bad = 0;
  for (int t = 0; t < T; ++t) {
    __syncthreads();
    for (int e = 0; e < 2; ++e) {
      const float v = lane * 1000.0f + t * 10 + e;
      if (__shfl_xor_sync(0xffffffffu, v, 1) != (lane ^ 1) * 1000.0f + t * 10 + e) bad += 1;
      if (__shfl_down_sync(0xffffffffu, v, 3) != (lane + 3 < 32 ? (lane + 3) * 1000.0f + t * 10 + e : v)) bad += 1;
      if (__shfl_sync(0xffffffffu, v, 7) != 7000.0f + t * 10 + e) bad += 1;
    }
    if (warp_sum((float)lane) != 496.0f) bad += 1;
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = bad;
}

__global__ void k_shared(int* out) {
  __shared__ int s[256];
  s[threadIdx.x] = (int)(threadIdx.x * 3 + blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// warp 1 reads what warp 0 wrote without a barrier in between: wrong in the reversed order
__global__ void k_missing_sync(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = (int)threadIdx.x + 1;
  out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void k_divergent(int* out) {
  // half a warp waits for its whole warp, the other half for the whole block: neither completes
  if ((threadIdx.x & 31) < 16) __syncwarp();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void k_atomic(int* c) { atomicAdd(c, 1); }

__global__ void k_write(float* p, int i) { p[i] = 1.0f; }

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "half") {  // every half -> float, then float -> half of each and of midpoints
    for (unsigned h = 0; h < 65536; ++h) {
      const float f = __half2float(__ushort_as_half((unsigned short)h));
      unsigned bits;
      std::memcpy(&bits, &f, 4);
      std::printf("%u %u\n", bits, (unsigned)__half_as_ushort(__float2half_rn(f)));
    }
    return 0;
  }
  if (mode == "f2h") {  // float bits from stdin -> half bits
    unsigned bits;
    while (std::scanf("%u", &bits) == 1) {
      float f;
      std::memcpy(&f, &bits, 4);
      std::printf("%u\n", (unsigned)__half_as_ushort(__float2half_rn(f)));
    }
    return 0;
  }
  if (mode == "shuffles") {
    float* d;
    cudaMalloc(&d, 4 * 64 * 8);
    xemu::launch(k_shuffles, "k_shuffles", dim3(8), dim3(64))(d, 3);
    float h[512];
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    float bad = 0;
    for (float v : h) bad += v;
    std::printf("bad %g\n", bad);
    return 0;
  }
  if (mode == "shared") {
    int* d;
    cudaMalloc(&d, 4 * 256 * 64);
    xemu::launch(k_shared, "k_shared", dim3(64), dim3(256))(d);
    static int h[256 * 64];
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < 64; ++b)
      for (int t = 0; t < 256; ++t) bad += h[b * 256 + t] != (255 - t) * 3 + b;
    std::printf("bad %d\n", bad);
    return 0;
  }
  if (mode == "missing_sync") {
    int* d;
    cudaMalloc(&d, 4 * 64 * 2);
    xemu::launch(k_missing_sync, "k_missing_sync", dim3(2), dim3(64))(d);
    int h[128];
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < 2; ++b)
      for (int t = 0; t < 64; ++t) bad += h[b * 64 + t] != 64 - t;
    std::printf("stale %d\n", bad);
    return 0;
  }
  if (mode == "atomic") {
    int* c;
    cudaMalloc(&c, 4);
    cudaMemset(c, 0, 4);
    xemu::launch(k_atomic, "k_atomic", dim3(100), dim3(128))(c);
    int h = 0;
    cudaMemcpy(&h, c, 4, cudaMemcpyDeviceToHost);
    std::printf("count %d\n", h);
    return 0;
  }
  if (mode == "deadlock") {
    int* d;
    cudaMalloc(&d, 4 * 128);
    try {
      xemu::launch(k_divergent, "k_divergent", dim3(1), dim3(128))(d);
      std::printf("no error\n");
    } catch (const std::exception& e) {
      std::printf("error %s\n", e.what());
    }
    return 0;
  }
  if (mode == "host_pointer") {
    static float host[16];
    xemu::launch(k_write, "k_write", dim3(1), dim3(1))(host, 0);
    const cudaError_t e = cudaGetLastError();
    std::printf("%s %s\n", cudaGetErrorName(e), cudaGetErrorString(e));
    return 0;
  }
  if (mode == "bad_config") {
    float* d;
    cudaMalloc(&d, 16);
    xemu::launch(k_write, "k_write", dim3(1), dim3(2048))(d, 0);
    std::printf("%s\n", cudaGetErrorName(cudaGetLastError()));
    return 0;
  }
  if (mode == "memcpy_direction") {
    float* d;
    cudaMalloc(&d, 64);
    float h[16] = {0};
    std::printf("%s\n", cudaGetErrorName(cudaMemcpy(h, d, 64, cudaMemcpyHostToDevice)));
    std::printf("%s\n", cudaGetErrorName(cudaMemcpy(d, h, 128, cudaMemcpyHostToDevice)));
    return 0;
  }
  if (mode == "overrun") {  // one element past a 10-float allocation (rounded to 12): must fault
    float* d;
    cudaMalloc(&d, 40);
    xemu::launch(k_write, "k_write", dim3(1), dim3(1))(d, 9);
    std::printf("in bounds ok\n");
    std::fflush(stdout);
    xemu::launch(k_write, "k_write", dim3(1), dim3(1))(d, 12);
    std::printf("overrun not caught\n");
    return 0;
  }
  if (mode == "graph") {  // capture two launches, replay them: the counter moves by 2 per replay
    int* c;
    cudaMalloc(&c, 4);
    cudaMemset(c, 0, 4);
    cudaStream_t st;
    cudaStreamCreate(&st);
    cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
    xemu::launch(k_atomic, "k_atomic", dim3(1), dim3(1), 0, st)(c);
    xemu::launch(k_atomic, "k_atomic", dim3(1), dim3(1), 0, st)(c);
    cudaGraph_t g;
    cudaStreamEndCapture(st, &g);
    int h = -1;
    cudaMemcpy(&h, c, 4, cudaMemcpyDeviceToHost);
    std::printf("after capture %d", h);
    cudaGraphExec_t e;
    cudaGraphInstantiate(&e, g, 0);
    for (int i = 0; i < 3; ++i) cudaGraphLaunch(e, st);
    cudaMemcpy(&h, c, 4, cudaMemcpyDeviceToHost);
    std::printf(" after 3 replays %d\n", h);
    return 0;
  }
  std::printf("unknown mode\n");
  return 2;
}
