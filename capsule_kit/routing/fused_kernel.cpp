// Fused dynamic routing on CPU (capsule_kit/routing/fused.py builds and documents it).
//
// One sample at a time, all K routing iterations run over that sample's votes
// (N_i x N_o x D_o, 737 KB for DigitCaps) while they sit in the core's cache, so
// the votes are read from memory once instead of once per routing pass (2K - 1),
// and each pass over a votes row does the agreement of iteration t and the
// coupling and weighted sum of iteration t + 1 together. Samples run in parallel.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <typename T>
void squash_into(const T* s, T* v, int64_t n_out, int64_t dim, bool efficient) {
  for (int64_t o = 0; o < n_out; ++o) {
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t k = 0; k < dim; ++k) sq += s[o * dim + k] * s[o * dim + k];
    const T r = std::sqrt(sq);
    const T scale = efficient ? (r > 0 ? -std::expm1(-r) / r : T(1)) : r / (T(1) + sq);
    for (int64_t k = 0; k < dim; ++k) v[o * dim + k] = scale * s[o * dim + k];
  }
}

// c[o] = softmax(logits)[o] (leaky: with an extra zero logit that is dropped).
template <typename T>
void coupling_row(const T* logits, T* c, int64_t n_out, bool leaky) {
  T top = leaky ? T(0) : logits[0];
  for (int64_t o = 0; o < n_out; ++o) top = std::max(top, logits[o]);
  T total = leaky ? std::exp(-top) : T(0);
  for (int64_t o = 0; o < n_out; ++o) total += (c[o] = std::exp(logits[o] - top));
  for (int64_t o = 0; o < n_out; ++o) c[o] /= total;
}

// Routes one sample: votes rows at base + i * row_stride, each N_o * D contiguous values.
template <typename T>
void route_sample(const T* base, int64_t row_stride, int64_t n_in, int64_t n_out, int64_t dim, int64_t iters,
                  bool leaky, bool efficient, T* s_out, T* c_out) {
  const int64_t width = n_out * dim;
  std::vector<T> logits(n_in * n_out, T(0)), s(width, T(0)), v(width);
  const T uniform = leaky ? T(1) / T(n_out + 1) : T(1) / T(n_out);
  for (int64_t i = 0; i < n_in; ++i) {  // iteration 1: uniform coupling
    const T* row = base + i * row_stride;
    for (int64_t j = 0; j < width; ++j) s[j] += uniform * row[j];
    std::fill(c_out + i * n_out, c_out + (i + 1) * n_out, uniform);
  }
  for (int64_t it = 1; it < iters; ++it) {
    squash_into(s.data(), v.data(), n_out, dim, efficient);
    std::fill(s.begin(), s.end(), T(0));
    for (int64_t i = 0; i < n_in; ++i) {
      const T* row = base + i * row_stride;
      T* lg = logits.data() + i * n_out;
      T* c = c_out + i * n_out;
      for (int64_t o = 0; o < n_out; ++o) {  // agreement of the previous iteration
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < dim; ++k) dot += row[o * dim + k] * v[o * dim + k];
        lg[o] += dot;
      }
      coupling_row(lg, c, n_out, leaky);
      for (int64_t o = 0; o < n_out; ++o) {  // weighted sum of this iteration
        const T co = c[o];
        T* so = s.data() + o * dim;
        const T* ro = row + o * dim;
#pragma omp simd
        for (int64_t k = 0; k < dim; ++k) so[k] += co * ro[k];
      }
    }
  }
  std::copy(s.begin(), s.end(), s_out);
}

}  // namespace

// votes: [B, N_i, N_o, D] with the last two dims contiguous (any batch / input strides).
// Returns (s [B, N_o, D]: the last iteration's weighted sum before squash, c [B, N_i, N_o]).
std::vector<torch::Tensor> route_forward(torch::Tensor votes, int64_t iters, bool leaky, bool efficient) {
  TORCH_CHECK(votes.dim() == 4 && votes.stride(3) == 1 && votes.stride(2) == votes.size(3),
              "fused routing needs votes [B, N_i, N_o, D] with contiguous (N_o, D) rows");
  const int64_t batch = votes.size(0), n_in = votes.size(1), n_out = votes.size(2), dim = votes.size(3);
  auto s = torch::empty({batch, n_out, dim}, votes.options());
  auto c = torch::empty({batch, n_in, n_out}, votes.options());
  AT_DISPATCH_FLOATING_TYPES(votes.scalar_type(), "route_forward", [&] {
    const scalar_t* data = votes.data_ptr<scalar_t>();
    scalar_t* s_data = s.data_ptr<scalar_t>();
    scalar_t* c_data = c.data_ptr<scalar_t>();
    const int64_t sb = votes.stride(0), si = votes.stride(1);
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        route_sample<scalar_t>(data + b * sb, si, n_in, n_out, dim, iters, leaky, efficient,
                               s_data + b * n_out * dim, c_data + b * n_in * n_out);
      }
    });
  });
  return {s, c};
}

namespace {

template <typename T>
void write_grad(const T* cd, const T* gd, T* od, int64_t sb, int64_t si, int64_t batch, int64_t n_in,
                int64_t n_out, int64_t dim) {
  at::parallel_for(0, n_in, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t b = 0; b < batch; ++b) {
        T* row = od + b * sb + i * si;
        const T* cb = cd + (b * n_in + i) * n_out;
        const T* gb = gd + b * n_out * dim;
        for (int64_t o = 0; o < n_out; ++o) {
          const T co = cb[o];
#pragma omp simd
          for (int64_t k = 0; k < dim; ++k) row[o * dim + k] = co * gb[o * dim + k];
        }
      }
    }
  });
}

}  // namespace

// dL/dvotes = c g written into `out` ([B, N_i, N_o, D], contiguous (N_o, D) rows, any batch / input strides),
// walking the memory in order for input-major votes. c: [B, N_i, N_o], grad_s: [B, N_o, D], both contiguous.
void route_backward(torch::Tensor c, torch::Tensor grad_s, torch::Tensor out) {
  TORCH_CHECK(out.stride(3) == 1 && out.stride(2) == out.size(3), "fused routing: odd gradient layout");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "route_backward", [&] {
    write_grad<scalar_t>(c.data_ptr<scalar_t>(), grad_s.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                         out.stride(0), out.stride(1), out.size(0), out.size(1), out.size(2), out.size(3));
  });
}
