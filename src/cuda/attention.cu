// com.matteflow.WindowAttention on the GPU (src/infer/onnx/window_attention.rs has the host reference).
// Float16 in and out, float32 accumulation and softmax. One block per (window, head); each warp takes 16 query
// rows with tensor-core mma.m16n8k16: q·kᵀ into registers (16 × SP scores per warp), scale + bias, softmax
// with quad shuffles, the probabilities reused in registers as the A operand of P·v (FlashAttention's trick).
// Head size 32 (Swin's in every stage); S ≤ 160 tokens (padded to SP, a multiple of 16). No headers: f16 goes
// through PTX conversions, so NVRTC needs no include path.

#define WA_HD 32
#define WA_MAX_TILES 20   // SP / 8 for SP = 160

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

// qkv [W, S, 3, H, 32], bias [Wb, Hb, S, S] or null, qkv_bias [3·H·32] or null → out [W, S, H, 32].
// Launch: grid (W, H), block SP / 16 warps, dynamic shared memory 192 · SP bytes.
extern "C" __global__ void window_attention(const unsigned short* __restrict__ qkv,
                                            const unsigned short* __restrict__ bias,
                                            const unsigned short* __restrict__ qkv_bias,
                                            unsigned short* __restrict__ out,
                                            int S, int H, int Wb, int Hb, float scale) {
    const int SP = ((S + 15) / 16) * 16;
    extern __shared__ unsigned wa_smem[];
    unsigned* Qs = wa_smem;                                  // [SP][16] words (two halves each)
    unsigned* Ks = wa_smem + SP * 16;                        // [SP][16]
    unsigned short* Vt = (unsigned short*)(wa_smem + SP * 32); // [32][SP] halves: v transposed
    const int w = blockIdx.x, h = blockIdx.y, C = H * WA_HD;
    const unsigned short* base = qkv + (size_t)w * S * 3 * C;

    for (int idx = threadIdx.x; idx < SP * 16; idx += blockDim.x) {
        const int t = idx >> 4, d = (idx & 15) * 2;
        float q0 = 0.f, q1 = 0.f, k0 = 0.f, k1 = 0.f, v0 = 0.f, v1 = 0.f;
        if (t < S) {
            const unsigned short* row = base + (size_t)t * 3 * C + h * WA_HD + d;
            q0 = wa_h2f(row[0]);         q1 = wa_h2f(row[1]);
            k0 = wa_h2f(row[C]);         k1 = wa_h2f(row[C + 1]);
            v0 = wa_h2f(row[2 * C]);     v1 = wa_h2f(row[2 * C + 1]);
            if (qkv_bias) {
                const unsigned short* b = qkv_bias + h * WA_HD + d;
                q0 += wa_h2f(b[0]);      q1 += wa_h2f(b[1]);
                k0 += wa_h2f(b[C]);      k1 += wa_h2f(b[C + 1]);
                v0 += wa_h2f(b[2 * C]);  v1 += wa_h2f(b[2 * C + 1]);
            }
        }
        Qs[idx] = wa_pack(q0, q1);
        Ks[idx] = wa_pack(k0, k1);
        Vt[d * SP + t] = wa_f2h(v0);
        Vt[(d + 1) * SP + t] = wa_f2h(v1);
    }
    __syncthreads();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    const int r0 = warp * 16, rowA = r0 + g, rowB = r0 + g + 8, tiles = SP / 8;

    unsigned a[2][4];
#pragma unroll
    for (int kc = 0; kc < 2; ++kc) {
        a[kc][0] = Qs[rowA * 16 + kc * 8 + tg];
        a[kc][1] = Qs[rowB * 16 + kc * 8 + tg];
        a[kc][2] = Qs[rowA * 16 + kc * 8 + tg + 4];
        a[kc][3] = Qs[rowB * 16 + kc * 8 + tg + 4];
    }

    float s[WA_MAX_TILES][4];
    float mA = -1e30f, mB = -1e30f;
    const unsigned short* bw = bias ? bias + ((size_t)(w % Wb) * Hb + (h % Hb)) * S * S : 0;
#pragma unroll
    for (int nt = 0; nt < WA_MAX_TILES; ++nt) {
        if (nt < tiles) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kc = 0; kc < 2; ++kc) {
                const unsigned* kr = Ks + (nt * 8 + g) * 16 + kc * 8 + tg;
                wa_mma(s[nt], a[kc], kr[0], kr[4]);
            }
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = nt * 8 + tg * 2 + e;
                if (col < S) {
                    float bA = 0.f, bB = 0.f;
                    if (bw) {
                        if (rowA < S) bA = wa_h2f(bw[rowA * S + col]);
                        if (rowB < S) bB = wa_h2f(bw[rowB * S + col]);
                    }
                    s[nt][e] = s[nt][e] * scale + bA;
                    s[nt][2 + e] = s[nt][2 + e] * scale + bB;
                } else {
                    s[nt][e] = -1e30f;
                    s[nt][2 + e] = -1e30f;
                }
                mA = fmaxf(mA, s[nt][e]);
                mB = fmaxf(mB, s[nt][2 + e]);
            }
        }
    }
    mA = fmaxf(mA, __shfl_xor_sync(0xffffffffu, mA, 1));
    mA = fmaxf(mA, __shfl_xor_sync(0xffffffffu, mA, 2));
    mB = fmaxf(mB, __shfl_xor_sync(0xffffffffu, mB, 1));
    mB = fmaxf(mB, __shfl_xor_sync(0xffffffffu, mB, 2));
    float sumA = 0.f, sumB = 0.f;
#pragma unroll
    for (int nt = 0; nt < WA_MAX_TILES; ++nt) {
        if (nt < tiles) {
            s[nt][0] = __expf(s[nt][0] - mA);
            s[nt][1] = __expf(s[nt][1] - mA);
            s[nt][2] = __expf(s[nt][2] - mB);
            s[nt][3] = __expf(s[nt][3] - mB);
            sumA += s[nt][0] + s[nt][1];
            sumB += s[nt][2] + s[nt][3];
        }
    }
    sumA += __shfl_xor_sync(0xffffffffu, sumA, 1);
    sumA += __shfl_xor_sync(0xffffffffu, sumA, 2);
    sumB += __shfl_xor_sync(0xffffffffu, sumB, 1);
    sumB += __shfl_xor_sync(0xffffffffu, sumB, 2);

    float o[4][4];
#pragma unroll
    for (int nd = 0; nd < 4; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < WA_MAX_TILES / 2; ++kc) {
        if (2 * kc < tiles) {
            unsigned p[4];
            p[0] = wa_pack(s[2 * kc][0], s[2 * kc][1]);
            p[1] = wa_pack(s[2 * kc][2], s[2 * kc][3]);
            p[2] = wa_pack(s[2 * kc + 1][0], s[2 * kc + 1][1]);
            p[3] = wa_pack(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
            for (int nd = 0; nd < 4; ++nd) {
                const unsigned* vr = (const unsigned*)(Vt + (nd * 8 + g) * SP + kc * 16 + tg * 2);
                wa_mma(o[nd], p, vr[0], vr[4]);
            }
        }
    }
    const float iA = 1.f / sumA, iB = 1.f / sumB;
#pragma unroll
    for (int nd = 0; nd < 4; ++nd) {
        const int col = h * WA_HD + nd * 8 + tg * 2;
        if (rowA < S) *(unsigned*)(out + ((size_t)w * S + rowA) * C + col) = wa_pack(o[nd][0] * iA, o[nd][1] * iA);
        if (rowB < S) *(unsigned*)(out + ((size_t)w * S + rowB) * C + col) = wa_pack(o[nd][2] * iB, o[nd][3] * iB);
    }
}
