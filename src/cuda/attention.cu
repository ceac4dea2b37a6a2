// com.matteflow.WindowAttention on the GPU (src/infer/onnx/window_attention.rs has the host reference).
// Float16 in and out, float32 accumulation and softmax. One block per (window, head); each warp takes 16 query
// rows with tensor-core mma.m16n8k16: q·kᵀ a chunk of keys at a time into registers, scale + bias + mask, an
// online softmax with quad shuffles, the probabilities reused in registers as the A operand of P·v
// (FlashAttention's scheme, on one window's keys held in shared memory).
// Head size 32 (Swin's in every stage); S ≤ 160 tokens (padded to SP = 8·WA_TILES, a multiple of 16). No
// headers: f16 goes through PTX conversions, so NVRTC needs no include path.

#define WA_HD 32
#ifndef WA_TILES
#define WA_TILES 20       // SP / 8: the launcher compiles one kernel per token count (-DWA_TILES=18 for 144)
#endif
#ifndef WA_CHUNK
#define WA_CHUNK 2        // key tiles per online-softmax step (even, divides WA_TILES; 6 for 144 tokens)
#endif
#ifndef WA_MIN_BLOCKS
#define WA_MIN_BLOCKS 1   // blocks per SM the register budget is set for
#endif

__device__ __forceinline__ float wa_h2f(unsigned short x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}

__device__ __forceinline__ unsigned short wa_f2h(float f) {
    unsigned short x;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x) : "f"(f));
    return x;
}

__device__ __forceinline__ unsigned wa_pack(float lo, float hi) {
    return (unsigned)wa_f2h(lo) | ((unsigned)wa_f2h(hi) << 16);
}

__device__ __forceinline__ void wa_mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Columns col, col + 1 of an S-wide row (null: a row past S) as two halves, 0 outside the row: one aligned
// 4-byte load when S is even (Swin's 12² = 144), else two (7² = 49).
__device__ __forceinline__ unsigned wa_pair(const unsigned short* row, int S, int col) {
    if (!row || col >= S) return 0u;
    if ((S & 1) == 0) return *(const unsigned*)(row + col);
    return (unsigned)row[col] | (col + 1 < S ? (unsigned)row[col + 1] << 16 : 0u);
}

// The bias and mask pairs one thread adds in chunk c0, rows A and B, raw (bias A, mask A, bias B, mask B): loaded
// a chunk ahead and converted only when used, so that global memory's latency hides behind a chunk's arithmetic.
__device__ __forceinline__ void wa_load_bias(unsigned (*r)[4], const unsigned short* bA, const unsigned short* bB,
                                             const unsigned short* mA, const unsigned short* mB, int S, int c0, int tg) {
#pragma unroll
    for (int j = 0; j < WA_CHUNK; ++j) {
        const int col = (c0 + j) * 8 + tg * 2;
        r[j][0] = wa_pair(bA, S, col);
        r[j][1] = wa_pair(mA, S, col);
        r[j][2] = wa_pair(bB, S, col);
        r[j][3] = wa_pair(mB, S, col);
    }
}

// The two halves of x + y, as floats.
__device__ __forceinline__ float wa_lo2(unsigned x, unsigned y) { return wa_h2f(x & 0xffff) + wa_h2f(y & 0xffff); }
__device__ __forceinline__ float wa_hi2(unsigned x, unsigned y) { return wa_h2f(x >> 16) + wa_h2f(y >> 16); }

// qkv [W, S, 3, H, 32], bias and mask [Wb, Hb, S, S] each or null (window w reads w % Wb, head h reads h % Hb:
// Swin's relative-position bias [1, H, S, S] and shift mask [nW, 1, S, S], kept apart so that neither is
// broadcast over the other in memory), qkv_bias [3·H·32] or null → out [W, S, H, 32].
// Launch: grid (W, H), block SP / 16 warps (SP = 8·WA_TILES ≥ S), dynamic shared memory 192 · SP bytes.
extern "C" __global__ void __launch_bounds__(WA_TILES * 16, WA_MIN_BLOCKS)
window_attention(const unsigned short* __restrict__ qkv, const unsigned short* __restrict__ bias,
                 const unsigned short* __restrict__ qkv_bias, const unsigned short* __restrict__ mask,
                 unsigned short* __restrict__ out, int S, int H, int Wb, int Hb, int Wm, int Hm, float scale) {
    const int SP = WA_TILES * 8;
    extern __shared__ uint4 wa_smem4[];
    unsigned* Qs = (unsigned*)wa_smem4;                      // [SP][16] words (two halves each)
    unsigned* Ks = Qs + SP * 16;                             // [SP][16]
    unsigned short* Vt = (unsigned short*)(Qs + SP * 32);    // [32][SP] halves: v transposed
    const int w = blockIdx.x, h = blockIdx.y, C = H * WA_HD;
    const unsigned short* base = qkv + (size_t)w * S * 3 * C + h * WA_HD;

    // 16-byte loads: a thread takes 8 dimensions of one token's q, k and v (C is a multiple of 32, so every
    // row of 8 starts 16-byte aligned).
    for (int idx = threadIdx.x; idx < SP * 4; idx += blockDim.x) {
        const int t = idx >> 2, d = (idx & 3) * 8;
        float q[8], k[8], v[8];
        if (t < S) {
            const unsigned short* row = base + (size_t)t * 3 * C + d;
            const uint4 rq = *(const uint4*)row, rk = *(const uint4*)(row + C), rv = *(const uint4*)(row + 2 * C);
            const unsigned short *hq = (const unsigned short*)&rq, *hk = (const unsigned short*)&rk, *hv = (const unsigned short*)&rv;
#pragma unroll
            for (int i = 0; i < 8; ++i) { q[i] = wa_h2f(hq[i]); k[i] = wa_h2f(hk[i]); v[i] = wa_h2f(hv[i]); }
            if (qkv_bias) {
                const unsigned short* b = qkv_bias + h * WA_HD + d;
#pragma unroll
                for (int i = 0; i < 8; ++i) { q[i] += wa_h2f(b[i]); k[i] += wa_h2f(b[C + i]); v[i] += wa_h2f(b[2 * C + i]); }
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) q[i] = k[i] = v[i] = 0.f;
        }
        *(uint4*)(Qs + t * 16 + d / 2) = make_uint4(wa_pack(q[0], q[1]), wa_pack(q[2], q[3]), wa_pack(q[4], q[5]), wa_pack(q[6], q[7]));
        *(uint4*)(Ks + t * 16 + d / 2) = make_uint4(wa_pack(k[0], k[1]), wa_pack(k[2], k[3]), wa_pack(k[4], k[5]), wa_pack(k[6], k[7]));
#pragma unroll
        for (int i = 0; i < 8; ++i) Vt[(d + i) * SP + t] = wa_f2h(v[i]);
    }
    __syncthreads();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    const int r0 = warp * 16, rowA = r0 + g, rowB = r0 + g + 8;

    unsigned a[2][4];
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
        a[kc][0] = Qs[rowA * 16 + kc * 8 + tg];
        a[kc][1] = Qs[rowB * 16 + kc * 8 + tg];
        a[kc][2] = Qs[rowA * 16 + kc * 8 + tg + 4];
        a[kc][3] = Qs[rowB * 16 + kc * 8 + tg + 4];
    }

    const unsigned short* bw = bias ? bias + ((size_t)(w % Wb) * Hb + (h % Hb)) * S * S : 0;
    const unsigned short* mw = mask ? mask + ((size_t)(w % Wm) * Hm + (h % Hm)) * S * S : 0;
    // this thread's rows of the bias and the mask (null past S or without one)
    const unsigned short* bA = bw && rowA < S ? bw + rowA * S : 0;
    const unsigned short* bB = bw && rowB < S ? bw + rowB * S : 0;
    const unsigned short* mrA = mw && rowA < S ? mw + rowA * S : 0;
    const unsigned short* mrB = mw && rowB < S ? mw + rowB * S : 0;
    // Keys in chunks of WA_CHUNK tiles of 8 with an online softmax (running max m, running sum l, the output
    // rescaled when the max grows): only one chunk's scores live in registers.
    float o[4][4];
#pragma unroll
    for (int nd = 0; nd < 4; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
    float mA = -1e30f, mB = -1e30f, lA = 0.f, lB = 0.f;
    unsigned bnext[WA_CHUNK][4];
    wa_load_bias(bnext, bA, bB, mrA, mrB, S, 0, tg);
#pragma unroll 1
    for (int c0 = 0; c0 < WA_TILES; c0 += WA_CHUNK) {
        float s[WA_CHUNK][4];
        unsigned bc[WA_CHUNK][4];
#pragma unroll
        for (int j = 0; j < WA_CHUNK; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) bc[j][e] = bnext[j][e];
        if (c0 + WA_CHUNK < WA_TILES) wa_load_bias(bnext, bA, bB, mrA, mrB, S, c0 + WA_CHUNK, tg);
        float cA = -1e30f, cB = -1e30f;
#pragma unroll
        for (int j = 0; j < WA_CHUNK; ++j) {
            const int nt = c0 + j;
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
            for (int kc = 0; kc < 2; ++kc) {
                const unsigned* kr = Ks + (nt * 8 + g) * 16 + kc * 8 + tg;
                wa_mma(s[j], a[kc], kr[0], kr[4]);
            }
            const int col = nt * 8 + tg * 2;
            const float add[4] = {wa_lo2(bc[j][0], bc[j][1]), wa_hi2(bc[j][0], bc[j][1]), wa_lo2(bc[j][2], bc[j][3]), wa_hi2(bc[j][2], bc[j][3])};
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const bool in = col + e < S;
                s[j][e] = in ? s[j][e] * scale + add[e] : -1e30f;
                s[j][2 + e] = in ? s[j][2 + e] * scale + add[2 + e] : -1e30f;
                cA = fmaxf(cA, s[j][e]);
                cB = fmaxf(cB, s[j][2 + e]);
            }
        }
        cA = fmaxf(cA, __shfl_xor_sync(0xffffffffu, cA, 1));
        cA = fmaxf(cA, __shfl_xor_sync(0xffffffffu, cA, 2));
        cB = fmaxf(cB, __shfl_xor_sync(0xffffffffu, cB, 1));
        cB = fmaxf(cB, __shfl_xor_sync(0xffffffffu, cB, 2));
        // (the first chunk holds column 0, so a row's max is a real score from the start)
        const float nA = fmaxf(mA, cA), nB = fmaxf(mB, cB);
        const float fA = __expf(mA - nA), fB = __expf(mB - nB);
        mA = nA;
        mB = nB;
        lA *= fA;
        lB *= fB;
#pragma unroll
        for (int nd = 0; nd < 4; ++nd) {
            o[nd][0] *= fA; o[nd][1] *= fA;
            o[nd][2] *= fB; o[nd][3] *= fB;
        }
#pragma unroll
        for (int j = 0; j < WA_CHUNK; ++j) {
            s[j][0] = __expf(s[j][0] - mA);
            s[j][1] = __expf(s[j][1] - mA);
            s[j][2] = __expf(s[j][2] - mB);
            s[j][3] = __expf(s[j][3] - mB);
            lA += s[j][0] + s[j][1];
            lB += s[j][2] + s[j][3];
        }
        // P·v: the probabilities, packed to f16 in registers, are the A operand (16 keys per mma)
#pragma unroll
        for (int kc = 0; kc < WA_CHUNK / 2; ++kc) {
            unsigned p[4];
            p[0] = wa_pack(s[2 * kc][0], s[2 * kc][1]);
            p[1] = wa_pack(s[2 * kc][2], s[2 * kc][3]);
            p[2] = wa_pack(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            p[3] = wa_pack(s[2 * kc + 1][2], s[2 * kc + 1][3]);
            const int key = (c0 + 2 * kc) * 8;
#pragma unroll
            for (int nd = 0; nd < 4; ++nd) {
                const unsigned* vr = (const unsigned*)(Vt + (nd * 8 + g) * SP + key + tg * 2);
                wa_mma(o[nd], p, vr[0], vr[4]);
            }
        }
    }
    lA += __shfl_xor_sync(0xffffffffu, lA, 1);
    lA += __shfl_xor_sync(0xffffffffu, lA, 2);
    lB += __shfl_xor_sync(0xffffffffu, lB, 1);
    lB += __shfl_xor_sync(0xffffffffu, lB, 2);
    const float iA = 1.f / lA, iB = 1.f / lB;
#pragma unroll
    for (int nd = 0; nd < 4; ++nd) {
        const int col = h * WA_HD + nd * 8 + tg * 2;
        if (rowA < S) *(unsigned*)(out + ((size_t)w * S + rowA) * C + col) = wa_pack(o[nd][0] * iA, o[nd][1] * iA);
        if (rowB < S) *(unsigned*)(out + ((size_t)w * S + rowB) * C + col) = wa_pack(o[nd][2] * iB, o[nd][3] * iB);
    }
}
