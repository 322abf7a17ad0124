// Standalone check of every attention tier this build has and this CPU runs, against the ref tier:
// decode and causal prefill over a paged KV cache (K/V stored as f32, f16, Q8_0), GQA and 1:1 heads,
// head_dim 64 / 96 / 40 (f32/f16 only: not a whole number of vectors or Q8_0 blocks), contexts
// spanning several pages with a ragged last page, 2 sequences decoded at once.
// Outputs must match ref within 2e-5 * (1 + |ref|) (different summation order, the vector exp).
// Exit status 0 when every check passes.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "cpu/attention.h"
#include "cpu/dispatch.h"
#include "cpu/kv_cache.h"

using namespace xsil;

namespace {

int g_fail = 0, g_checks = 0;

void compare(const std::string& name, const std::vector<float>& got, const std::vector<float>& ref, double& worst) {
  ++g_checks;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs((double)got[i] - ref[i]);
    const double tol = 2e-5 * (1.0 + std::fabs((double)ref[i]));
    worst = std::max(worst, d / (1.0 + std::fabs((double)ref[i])));
    if (!(d <= tol)) {
      if (bad++ == 0 && g_fail < 30)
        std::printf("FAIL: %s: out[%zu] = %.8g, ref %.8g\n", name.c_str(), i, got[i], ref[i]);
    }
  }
  if (bad) ++g_fail;
}

const char* dt_name(KVDtype d) { return d == KVDtype::F32 ? "f32" : d == KVDtype::F16 ? "f16" : "q8_0"; }

void run_cases(const AttentionKernels& tk, const AttentionKernels& rk, std::mt19937& rng, double& worst) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (KVDtype dt : {KVDtype::F32, KVDtype::F16, KVDtype::Q8_0}) {
    for (int hd : {64, 96, 40}) {
      if (dt == KVDtype::Q8_0 && hd % 32) continue;
      for (int n_heads : {2, 8}) {  // with 2 KV heads: 1:1 and GQA group 4
        KVCacheParams cp;
        cp.n_layers = 1;
        cp.n_kv_heads = 2;
        cp.head_dim = hd;
        cp.page_size = 16;
        cp.k_dtype = dt;
        cp.v_dtype = dt;
        cp.budget_tokens = 256;
        KVCache cache(cp);
        const int lens[2] = {37, 5};
        int32_t ids[2];
        for (int s = 0; s < 2; ++s) {
          ids[s] = cache.add_sequence();
          const int64_t pos = cache.reserve(ids[s], lens[s]);
          std::vector<float> k((size_t)lens[s] * 2 * hd), v(k.size());
          for (auto& x : k) x = nd(rng);
          for (auto& x : v) x = nd(rng);
          KVWriteParams w;
          w.layer = 0;
          w.seq_id = ids[s];
          w.pos0 = pos;
          w.n_tokens = lens[s];
          w.k = k.data();
          w.v = v.data();
          cache.write(w);
        }
        const std::string base = std::string(tier_name(tk.tier)) + " " + dt_name(dt) + " hd=" + std::to_string(hd) +
                                 " heads=" + std::to_string(n_heads) + "/2";
        // decode, both sequences at once
        {
          std::vector<float> q((size_t)2 * n_heads * hd), o1(q.size()), o2(q.size());
          for (auto& x : q) x = nd(rng);
          AttnDecodeParams p;
          p.cache = &cache;
          p.n_seqs = 2;
          p.seq_ids = ids;
          p.n_heads = n_heads;
          p.q = q.data();
          p.out = o1.data();
          attention_decode(p, tk, 2);
          p.out = o2.data();
          attention_decode(p, rk, 2);
          compare(base + " decode", o1, o2, worst);
        }
        // prefill: the last n_q positions of sequence 0
        for (int n_q : {1, 3, 37}) {
          std::vector<float> q((size_t)n_q * n_heads * hd), o1(q.size()), o2(q.size());
          for (auto& x : q) x = nd(rng);
          AttnPrefillParams p;
          p.cache = &cache;
          p.seq_id = ids[0];
          p.n_q = n_q;
          p.n_heads = n_heads;
          p.q = q.data();
          p.out = o1.data();
          attention_prefill(p, tk, 2);
          p.out = o2.data();
          attention_prefill(p, rk, 2);
          compare(base + " prefill n_q=" + std::to_string(n_q), o1, o2, worst);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  unsigned seed = argc > 1 ? (unsigned)std::strtoul(argv[1], nullptr, 10) : 1234u;
  std::mt19937 rng(seed);
  ThreadPool::global().set_num_threads(2);
  const AttentionKernels& rk = attention_kernels(Tier::Ref);
  int tested = 0;
  for (const TierInfo& t : tiers()) {
    if (!t.available || t.tier == Tier::Ref) continue;
    const AttentionKernels& tk = attention_kernels(t.tier);
    if (tk.span == rk.span) {
      std::printf("attention tier %-13s uses the ref span kernel (nothing to compare)\n", t.name.c_str());
      continue;
    }
    ++tested;
    const int f0 = g_fail;
    double worst = 0.0;
    run_cases(tk, rk, rng, worst);
    std::printf("attention tier %-13s %s (worst |diff|/(1+|ref|) %.3g)\n", t.name.c_str(), g_fail == f0 ? "PASS" : "FAIL",
                worst);
  }
  if (tested == 0) std::printf("no SIMD attention tier available here (nothing compared)\n");
  std::printf("attention: %d checks, %d failures\n", g_checks, g_fail);
  return g_fail ? 1 : 0;
}
