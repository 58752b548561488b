/* Inverted dropout on CPU in one pass, with counter-based random bits.

   Word w (a 32-bit value) of a call with keys (k0, k1) is hash(hash(w ^ k0) ^ k1), hash being Wellons' lowbias32.
   It depends on (k0, k1, w) alone: the mask is the same for any number of threads, and backward regenerates it
   from the keys instead of keeping it. Value 2w reads the word's low 16 bits u, value 2w + 1 its high 16 bits;
   a value is kept (and scaled) when u >= dropped, i.e. with probability 1 - dropped / 65536.
   lightning_modules/cpu_kernels.py computes the same bits with torch operations (its fallback when no C compiler
   is found); tests/test_cpu_kernels.py checks that both give the same values bit for bit.
   The caller passes the thread count (torch.get_num_threads()): the loop never runs more threads than torch's own
   ops, whichever OpenMP runtime the library was linked against. */

#include <stdint.h>

static inline uint32_t lowbias32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline uint32_t word(uint32_t w, uint32_t k0, uint32_t k1) { return lowbias32(lowbias32(w ^ k0) ^ k1); }

#if defined(__x86_64__)
#define AUTO_SIMD __attribute__((target_clones("avx2", "default"))) /* AVX2 where the CPU has it */
#else
#define AUTO_SIMD
#endif

/* y[i] = x[i] * scale where value i is kept, else x[i] * 0; n < 2^33. x and y may be the same array. */
AUTO_SIMD void finscale_dropout(const float *x, float *y, int64_t n, uint32_t k0, uint32_t k1, uint32_t dropped, float scale,
                                int32_t threads) {
    int64_t pairs = n / 2;
#pragma omp parallel for schedule(static) num_threads(threads) if (n > 65536 && threads > 1)
    for (int64_t w = 0; w < pairs; ++w) {
        uint32_t r = word((uint32_t)w, k0, k1);
        y[2 * w] = x[2 * w] * ((r & 0xffffu) >= dropped ? scale : 0.0f);
        y[2 * w + 1] = x[2 * w + 1] * ((r >> 16) >= dropped ? scale : 0.0f);
    }
    if (n % 2) {
        uint32_t r = word((uint32_t)pairs, k0, k1);
        y[n - 1] = x[n - 1] * ((r & 0xffffu) >= dropped ? scale : 0.0f);
    }
}
