#!/usr/bin/env python3
# Lane-level CPU emulation of attention_fwd<DH> in kernels/attention.cu (no GPU
# needed, pure Python): replays the kernel's smem tiles, ldmatrix / ldmatrix.trans
# addresses, mma.sync m16n8k16 fragment layouts (as the PTX ISA defines them),
# key masking, online softmax and epilogue for one (sequence, head), and
# compares with a direct softmax attention. Usage:
#   python3 scripts/emulate_attention.py [DH,len_q,len_k ...]
# It checks the index formulas, not the hardware: run tests/gpu on a GPU too.
import math, random, struct, sys

def h(x):  # round to f16
    return struct.unpack('e', struct.pack('e', x))[0]

def ldmatrix(smem, addrs, trans):
    regs = [[None]*4 for _ in range(32)]
    for l in range(32):
        for i in range(4):
            if not trans:
                a = addrs[8*i + l//4] + 2*(l%4)
                regs[l][i] = (smem[a], smem[a+1])
            else:
                regs[l][i] = (smem[addrs[8*i + 2*(l%4)] + l//4], smem[addrs[8*i + 2*(l%4) + 1] + l//4])
    return regs

def mma(c, a, b0, b1):
    A = [[0.0]*16 for _ in range(16)]
    B = [[0.0]*8 for _ in range(16)]
    for l in range(32):
        g, t = l//4, l%4
        A[g][2*t], A[g][2*t+1] = a[l][0]
        A[g+8][2*t], A[g+8][2*t+1] = a[l][1]
        A[g][2*t+8], A[g][2*t+9] = a[l][2]
        A[g+8][2*t+8], A[g+8][2*t+9] = a[l][3]
        B[2*t][g], B[2*t+1][g] = b0[l]
        B[2*t+8][g], B[2*t+9][g] = b1[l]
    D = [[sum(A[i][k]*B[k][j] for k in range(16)) for j in range(8)] for i in range(16)]
    for l in range(32):
        g, t = l//4, l%4
        c[l][0] += D[g][2*t]; c[l][1] += D[g][2*t+1]
        c[l][2] += D[g+8][2*t]; c[l][3] += D[g+8][2*t+1]

def run(DH, len_q, len_k, seed):
    rnd = random.Random(seed)
    BM, BN = 64, 64
    LDS = DH + 8
    Q = [[h(rnd.gauss(0, 1)) for _ in range(DH)] for _ in range(len_q)]
    K = [[h(rnd.gauss(0, 1)) for _ in range(DH)] for _ in range(len_k)]
    V = [[h(rnd.gauss(0, 1)) for _ in range(DH)] for _ in range(len_k)]
    scale_log2 = math.log2(math.e) / math.sqrt(DH)
    out = [[float('nan')]*DH for _ in range(len_q)]
    def load_tile(rows_src, r0, valid, ROWS):
        s = [float('nan')] * (ROWS*LDS)   # padding columns stay NaN: must never be read
        for r in range(ROWS):
            for c in range(DH):
                s[r*LDS + c] = rows_src[r0 + r][c] if r < valid else 0.0
        return s
    n_tiles = (len_k + BN - 1)//BN
    for bx in range((len_q + BM - 1)//BM):
        m0 = bx*BM
        sQ = load_tile(Q, m0, len_q - m0, BM)
        for warp in range(4):
            if not (m0 + warp*16 < len_q): continue
            o = [[[0.0]*4 for _ in range(DH//8)] for _ in range(32)]
            m_run = [[-math.inf]*2 for _ in range(32)]
            l_run = [[0.0]*2 for _ in range(32)]
            qf = []
            for ks in range(DH//16):
                addrs = [(warp*16 + (l & 15))*LDS + ks*16 + (l >> 4)*8 for l in range(32)]
                qf.append(ldmatrix(sQ, addrs, False))
            for it in range(n_tiles):
                n0 = it*BN
                sK = load_tile(K, n0, len_k - n0, BN)
                sV = load_tile(V, n0, len_k - n0, BN)
                s = [[[0.0]*4 for _ in range(BN//8)] for _ in range(32)]
                for ks in range(DH//16):
                    for np_ in range(BN//16):
                        addrs = [(np_*16 + (l & 7) + ((l >> 4) << 3))*LDS + ks*16 + ((l >> 3) & 1)*8 for l in range(32)]
                        bf = ldmatrix(sK, addrs, False)
                        c0 = [s[l][2*np_] for l in range(32)]
                        c1 = [s[l][2*np_+1] for l in range(32)]
                        mma(c0, qf[ks], [bf[l][0] for l in range(32)], [bf[l][1] for l in range(32)])
                        mma(c1, qf[ks], [bf[l][2] for l in range(32)], [bf[l][3] for l in range(32)])
                for l in range(32):
                    t = l & 3
                    if n0 + BN > len_k:
                        for j in range(BN//8):
                            for c in range(4):
                                if n0 + j*8 + 2*t + (c & 1) >= len_k: s[l][j][c] = -math.inf
                mx = [[max(max(s[l][j][0], s[l][j][1]) for j in range(BN//8)), max(max(s[l][j][2], s[l][j][3]) for j in range(BN//8))] for l in range(32)]
                for r in range(2):
                    a = [max(mx[l][r], mx[l ^ 1][r]) for l in range(32)]
                    b = [max(a[l], a[l ^ 2]) for l in range(32)]
                    for l in range(32): mx[l][r] = b[l]
                alpha = [[0.0]*2 for _ in range(32)]
                for l in range(32):
                    for r in range(2):
                        m_new = max(m_run[l][r], mx[l][r]*scale_log2)
                        alpha[l][r] = 2.0 ** (m_run[l][r] - m_new) if m_run[l][r] != -math.inf else 0.0
                        m_run[l][r] = m_new
                    rs = [0.0, 0.0]
                    for j in range(BN//8):
                        for c in range(4):
                            r = c >> 1
                            x = s[l][j][c]
                            s[l][j][c] = 0.0 if x == -math.inf else 2.0 ** (x*scale_log2 - m_run[l][r])
                            rs[r] += s[l][j][c]
                    for r in range(2): l_run[l][r] = l_run[l][r]*alpha[l][r] + rs[r]
                    for j in range(DH//8):
                        o[l][j][0] *= alpha[l][0]; o[l][j][1] *= alpha[l][0]
                        o[l][j][2] *= alpha[l][1]; o[l][j][3] *= alpha[l][1]
                for kk in range(BN//16):
                    pa = [[(h(s[l][2*kk][0]), h(s[l][2*kk][1])), (h(s[l][2*kk][2]), h(s[l][2*kk][3])),
                           (h(s[l][2*kk+1][0]), h(s[l][2*kk+1][1])), (h(s[l][2*kk+1][2]), h(s[l][2*kk+1][3]))] for l in range(32)]
                    for dp in range(DH//16):
                        addrs = [(kk*16 + (l & 7) + ((l >> 3) & 1)*8)*LDS + dp*16 + (l >> 4)*8 for l in range(32)]
                        bf = ldmatrix(sV, addrs, True)
                        c0 = [o[l][2*dp] for l in range(32)]
                        c1 = [o[l][2*dp+1] for l in range(32)]
                        mma(c0, pa, [bf[l][0] for l in range(32)], [bf[l][1] for l in range(32)])
                        mma(c1, pa, [bf[l][2] for l in range(32)], [bf[l][3] for l in range(32)])
            inv = [[0.0]*2 for _ in range(32)]
            for r in range(2):
                a = [l_run[l][r] + l_run[l ^ 1][r] for l in range(32)]
                b = [a[l] + a[l ^ 2] for l in range(32)]
                for l in range(32): inv[l][r] = 1.0/b[l] if b[l] > 0 else 0.0
            so = [float('nan')]*(16*LDS)
            for l in range(32):
                g, t = l >> 2, l & 3
                for j in range(DH//8):
                    so[g*LDS + j*8 + 2*t] = h(o[l][j][0]*inv[l][0]); so[g*LDS + j*8 + 2*t + 1] = h(o[l][j][1]*inv[l][0])
                    so[(g+8)*LDS + j*8 + 2*t] = h(o[l][j][2]*inv[l][1]); so[(g+8)*LDS + j*8 + 2*t + 1] = h(o[l][j][3]*inv[l][1])
            CH = DH//8
            row0 = m0 + warp*16
            for i in range(16*CH):
                r, c = i // CH, i % CH
                if row0 + r < len_q:
                    out[row0 + r][c*8:c*8+8] = so[r*LDS + c*8: r*LDS + c*8 + 8]
    # direct reference
    num = den = 0.0
    for i in range(len_q):
        sc = [sum(Q[i][d]*K[j][d] for d in range(DH))/math.sqrt(DH) for j in range(len_k)]
        mx = max(sc); e = [math.exp(x - mx) for x in sc]; z = sum(e)
        for d in range(DH):
            ref = sum(e[j]*V[j][d] for j in range(len_k))/z
            assert out[i][d] == out[i][d], f"unwritten/NaN at row {i} col {d}"
            num += (out[i][d]-ref)**2; den += ref**2
    err = math.sqrt(num/den)
    print(f"DH={DH} len_q={len_q} len_k={len_k}: rel err {err:.2e}")
    assert err < 3e-3
for DH, lq, lk in ([(int(a), int(b), int(c)) for a, b, c in (x.split(",") for x in sys.argv[1:])] or [(32, 1, 1), (32, 20, 70), (64, 17, 64), (64, 65, 129), (32, 70, 3)]):
    run(DH, lq, lk, DH + lq + lk)
