/* Compiled and run by test_capi.py against the installed header and library: quantize, dequantize
 * and matmul a small matrix through the C ABI, and check one error path. Exit status 0 = pass. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <xsil/xsil.h>

#define M 2
#define N 3
#define K 64

int main(void) {
  if (xsil_abi_version() != XSIL_ABI_VERSION) {
    fprintf(stderr, "ABI mismatch: header %d, library %d\n", XSIL_ABI_VERSION, (int)xsil_abi_version());
    return 1;
  }
  if (strcmp(xsil_version(), XSIL_VERSION) != 0) {
    fprintf(stderr, "version mismatch: %s vs %s\n", xsil_version(), XSIL_VERSION);
    return 1;
  }
  printf("xsil %s (ABI %d), arch %s, tier %s, %d threads\n", xsil_version(), (int)xsil_abi_version(), xsil_cpu_arch(),
         xsil_cpu_get_tier(), (int)xsil_get_num_threads());
  for (int32_t i = 0; i < xsil_cpu_tier_count(); ++i)
    printf("  tier %s: %s\n", xsil_cpu_tier_name(i),
           xsil_cpu_tier_available(i) ? "available" : xsil_cpu_tier_reason(i));

  float w[N * K], x[M * K], wd[N * K], y[M * N], ye[M * N];
  for (int i = 0; i < N * K; ++i) w[i] = (float)((i * 37) % 23 - 11) / 8.0f;
  for (int i = 0; i < M * K; ++i) x[i] = (float)((i * 13) % 17 - 8) / 4.0f;

  const int64_t rb = xsil_format_row_bytes(XSIL_FMT_Q8_0, K);
  if (rb != K / 32 * 34) return 2;
  unsigned char wq[N * (K / 32 * 34)];
  if (xsil_quantize(XSIL_FMT_Q8_0, w, N, K, wq, sizeof wq, 0) != XSIL_OK) {
    fprintf(stderr, "quantize: %s\n", xsil_last_error());
    return 3;
  }
  if (xsil_dequantize(XSIL_FMT_Q8_0, wq, sizeof wq, N, K, wd, N * K, 0) != XSIL_OK) {
    fprintf(stderr, "dequantize: %s\n", xsil_last_error());
    return 4;
  }
  for (int i = 0; i < N * K; ++i)
    if (fabsf(wd[i] - w[i]) > 0.02f) return 5;
  if (xsil_matmul(x, M, K, wq, sizeof wq, N, XSIL_FMT_Q8_0, y, M * N, 0, NULL, 0) != XSIL_OK ||
      xsil_matmul(x, M, K, wq, sizeof wq, N, XSIL_FMT_Q8_0, ye, M * N, 1, "ref", 1) != XSIL_OK) {
    fprintf(stderr, "matmul: %s\n", xsil_last_error());
    return 6;
  }
  for (int i = 0; i < M * N; ++i)
    if (fabsf(y[i] - ye[i]) > 0.05f * (1.0f + fabsf(ye[i]))) return 7;

  /* A too-small output buffer is refused before anything is written. */
  xsil_status s = xsil_matmul(x, M, K, wq, sizeof wq, N, XSIL_FMT_Q8_0, y, M * N - 1, 0, NULL, 0);
  if (s != XSIL_ERR_INVALID_ARGUMENT || strstr(xsil_last_error(), "[matmul] y has room for 5 floats") == NULL) {
    fprintf(stderr, "expected a y capacity error, got %s: %s\n", xsil_status_name(s), xsil_last_error());
    return 8;
  }
  printf("y[0] = %g (exact %g)\nok\n", y[0], ye[0]);
  return 0;
}
