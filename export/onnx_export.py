"""SmallViT -> ONNX, written node by node so the graph is exactly what we intend.

Two flavours:
  portable  standard operators only. Sparse experts use the masked-threshold attention of DESIGN.md section 3
            (MatMul, TopK for the k-th value, Less + Where, Softmax, MatMul); experts with k >= N are plain
            attention. No Expand/GatherElements.
  plugin    the same, but each sparse expert's attention is one ``SparseTopKAttention`` node in the
            ``moe_denoise`` domain: the TensorRT plugin.

``optimize=True`` applies exact algebraic rewrites (each tested on its own):
  * one GEMM for the three experts' Q/K/V projections and the router's hidden layer,
  * merge_proj folded into the experts' output projections (exact because routing probabilities sum to 1):
        merge(sum_e p_e (o_e W_e^T + b_e)) = sum_e p_e o_e (W_m W_e)^T + sum_e p_e (W_m b_e + b_m),
    computed as one GEMM per expert on its probability-weighted output, summed, plus p @ B with
    B[e] = W_m b_e + b_m (with rows2d: one Gemm over [p_0 o_0 | p_1 o_1 | p_2 o_2 | p]),
  * the 1/sqrt(d) scale folded into W_q and b_q,
  * the key and value biases removed from the attention (exact because of what softmax is):
        the key bias adds q . b_k to every score of a query's row, a per-row constant that changes neither the
        softmax nor which keys are the row's top k; softmax rows sum to 1, so P (V + 1 b_v^T) = P V + 1 b_v^T and
        the value bias moves through the output projection into its bias: b_out + W_out b_v,
  * patch embedding and un-embedding as reshapes + one GEMM (conv bias folded into the position embedding).
``optimize=False`` is a one-to-one translation of the PyTorch modules, for comparison.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_base.contract import INPUT_NAME, OUTPUT_NAME
from moe_base.errors import InputError
from topk_attention.spec import MAX_TOKENS, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

from .graph import GraphBuilder

DEFAULT_OPSET = 17
FLAVORS = ("portable", "plugin")
LN_EPS = 1e-5
# The exact rewrites, each switchable on its own (tests check each one alone against the plain graph).
REWRITES = {
    "fuse_qkv": "one GEMM for the experts' Q/K/V projections and the router's hidden layer",
    "fold_merge": "merge_proj folded into the experts' output projections (one GEMM per expert on p_e o_e, summed)",
    "fold_scale": "1/sqrt(d) folded into W_q and b_q",
    "fold_kv_bias": "key bias dropped (a per-query constant on every score), value bias moved into the output bias",
    "gemm_patches": "patch embedding / un-embedding as reshapes + GEMM, conv bias folded into pos_embed",
    "rows2d": "tokens kept as a 2-D (B*N, C) matrix so every projection is one Gemm with its bias fused",
}

# What `optimize` turns on: the rewrites that remove work without adding data movement (merge_proj's GEMM; the
# scale's pass over every score tensor; two bias additions per expert). The others add copies (fuse_qkv's strided
# Split, gemm_patches' 6-D transposes) that ONNX Runtime's CPU kernels pay for (docs/benchmarks.md has the A/B);
# they stay available (ExportOptions.rewrites, `export --rewrites`): exact, and one Q/K/V GEMM is what a GPU wants.
DEFAULT_REWRITES = ("fold_merge", "fold_scale", "fold_kv_bias")


@dataclass
class ExportOptions:
    """Export settings as data (in the spirit of optimum's OnnxConfig)."""

    flavor: str = "portable"
    optimize: bool = True
    rewrites: tuple[str, ...] | None = None  # None: DEFAULT_REWRITES when optimize, none otherwise
    opset: int = DEFAULT_OPSET
    precision: str = "fp32"  # fp16: fp16 weights and activations, fp32 I/O, LayerNorm and softmax in fp32
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    dynamic_batch: bool = True

    def validate(self) -> None:
        if self.flavor not in FLAVORS:
            raise InputError(f"unknown ONNX flavour {self.flavor!r}; expected one of {FLAVORS}")
        if not 17 <= self.opset <= 21:
            raise InputError(f"opset {self.opset} is not supported; use 17..21 (LayerNormalization needs >= 17; --opset)")
        if self.precision not in ("fp32", "fp16"):
            raise InputError(f"unknown precision {self.precision!r}; expected fp32 or fp16")
        unknown = sorted(set(self.rewrites or ()) - set(REWRITES))
        if unknown:
            raise InputError(f"unknown rewrites {unknown}; known: {sorted(REWRITES)}")

    @property
    def active_rewrites(self) -> tuple[str, ...]:
        if self.rewrites is not None:
            return tuple(r for r in REWRITES if r in self.rewrites)
        return DEFAULT_REWRITES if self.optimize else ()


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().double().numpy()


class _Writer:
    """Translates one SmallViT into ONNX nodes."""

    def __init__(self, model: Any, opts: ExportOptions) -> None:
        self.m, self.o, self.c = model, opts, model.config
        self.notes: list[str] = []  # decisions worth reporting (an expert left dense, the plugin's limit)
        self.rw = set(opts.active_rewrites)
        self.rows = "rows2d" in self.rw  # tokens as (B*N, C) rows instead of (B, N, C)
        self.g = GraphBuilder(opts.opset, name=f"moe_denoiser_{self.c.name}")
        self.sd = {k: _np(v) for k, v in model.state_dict().items()}
        self.fp16 = opts.precision == "fp16"
        self.f32 = lambda name, a: self.g.const(name, np.asarray(a, dtype=np.float32))
        # weights and constants that meet activations live in the compute precision
        self.w = lambda name, a: self.g.const(name, np.asarray(a, dtype=np.float16 if self.fp16 else np.float32))

    def cast(self, x: str, to32: bool, name: str) -> str:
        """Switch between the compute precision and fp32 (a no-op in an fp32 graph)."""
        if not self.fp16:
            return x
        from onnx import TensorProto

        return self.g.op("Cast", [x], name=f"{name}_{'to32' if to32 else 'to16'}",
                         to=TensorProto.FLOAT if to32 else TensorProto.FLOAT16)

    # --- building blocks ------------------------------------------------------------------------------
    def linear(self, x: str, w: np.ndarray, b: np.ndarray | None, name: str) -> str:
        """x @ w.T + b, with w in PyTorch's (out, in) layout. With rows2d, x is (B*N, C) and this is one Gemm."""
        if self.rows:
            inputs = [x, self.w(f"{name}.weight", w)] + ([self.w(f"{name}.bias", b)] if b is not None else [])
            return self.g.op("Gemm", inputs, name=f"{name}_gemm", transB=1)
        y = self.g.op("MatMul", [x, self.w(f"{name}.weight_t", w.T)], name=f"{name}_matmul")
        return y if b is None else self.g.op("Add", [y, self.w(f"{name}.bias", b)], name=f"{name}_add")

    def layer_norm(self, x: str, prefix: str) -> str:
        y = self.g.op("LayerNormalization", [self.cast(x, True, prefix),
                                             self.f32(f"{prefix}.weight", self.sd[f"{prefix}.weight"]),
                                             self.f32(f"{prefix}.bias", self.sd[f"{prefix}.bias"])],
                      name=prefix, axis=-1, epsilon=LN_EPS)  # always fp32: statistics need the range
        return self.cast(y, False, prefix)

    def gelu(self, x: str, name: str) -> str:
        """Exact (erf) GELU from opset-17 operators; onnxruntime fuses this pattern into one Gelu kernel."""
        g = self.g
        e = g.op("Erf", [g.op("Div", [x, self.w(f"{name}.sqrt2", math.sqrt(2.0))], name=f"{name}_div")],
                 name=f"{name}_erf")
        e1 = g.op("Add", [e, self.w(f"{name}.one", 1.0)], name=f"{name}_add")
        return g.op("Mul", [g.op("Mul", [x, e1], name=f"{name}_mul"), self.w(f"{name}.half", 0.5)],
                    name=f"{name}_mul")

    def heads(self, x: str, name: str, transpose_k: bool = False) -> str:
        """(B, N, C) or (B*N, C) -> (B, H, N, d), or (B, H, d, N) for keys fed to a plain MatMul."""
        c = self.c
        shape = [-1, c.num_tokens, c.num_heads, c.head_dim] if self.rows else [0, 0, c.num_heads, c.head_dim]
        r = self.g.op("Reshape", [x, self.g.ints(f"{name}.shape", shape)], name=f"{name}_rs")
        return self.g.op("Transpose", [r], name=f"{name}_t", perm=[0, 2, 3, 1] if transpose_k else [0, 2, 1, 3])

    def merge_heads(self, o: str, name: str) -> str:
        t = self.g.op("Transpose", [o], name=f"{name}_t", perm=[0, 2, 1, 3])  # (B, N, H, d)
        shape = [-1, self.c.dim] if self.rows else [0, 0, self.c.dim]
        return self.g.op("Reshape", [t, self.g.ints(f"{name}.shape", shape)], name=f"{name}_rs")

    def attention(self, q: str, k: str, v: str, topk: int, scale: float, name: str) -> str:
        """q, k, v (B, N, C) projections -> attention output (B, N, C)."""
        g, n = self.g, self.c.num_tokens
        sparse = topk < n
        if not sparse and self.o.flavor == "plugin":
            self.notes.append(f"{name}: k = {topk} >= N = {n}, so this expert is dense attention: standard operators")
        if sparse and self.o.flavor == "plugin":
            if n > MAX_TOKENS:
                self.notes.append(f"{name}: N = {n} > {MAX_TOKENS}, the plugin's limit: standard operators used")
            else:
                o = g.op(PLUGIN_NAME, [self.heads(q, f"{name}.q"), self.heads(k, f"{name}.k"), self.heads(v, f"{name}.v")],
                         name=f"{name}_plugin", domain=PLUGIN_NAMESPACE, topk=topk, scale=float(scale),
                         plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION, aot=1)
                from onnx import TensorProto

                c = self.c  # the plugin's output is shaped like q: declared, since inference cannot see through it
                g.info(o, TensorProto.FLOAT16 if self.fp16 else TensorProto.FLOAT,
                       ["batch" if self.o.dynamic_batch else 1, c.num_heads, n, c.head_dim])
                return self.merge_heads(o, f"{name}.o")
        s = g.op("MatMul", [self.heads(q, f"{name}.q"), self.heads(k, f"{name}.k", transpose_k=True)],
                 name=f"{name}_scores")  # (B, H, N, N)
        s = self.cast(s, True, f"{name}.scores")  # threshold and softmax in fp32
        if scale != 1.0:
            s = g.op("Mul", [s, self.f32(f"{name}.scale", scale)], name=f"{name}_scale")
        if sparse:
            top = g.op("TopK", [s, g.ints(f"{name}.k", [topk])], name=f"{name}_topk", outputs=2, axis=-1,
                       largest=1, sorted=0)[0]  # (B, H, N, k), any order: only the minimum is used
            if g.opset >= 18:  # ReduceMin-18 takes its axes as an input, no longer as an attribute
                thresh = g.op("ReduceMin", [top, g.ints(f"{name}.kth_axes", [-1])], name=f"{name}_kth", keepdims=1)
            else:
                thresh = g.op("ReduceMin", [top], name=f"{name}_kth", axes=[-1], keepdims=1)  # (B, H, N, 1)
            drop = g.op("Less", [s, thresh], name=f"{name}_below")
            s = g.op("Where", [drop, self.f32(f"{name}.neg_inf", -np.inf), s], name=f"{name}_mask")
        p = self.cast(g.op("Softmax", [s], name=f"{name}_softmax", axis=-1), False, f"{name}.probs")
        o = g.op("MatMul", [p, self.heads(v, f"{name}.v")], name=f"{name}_pv")  # (B, H, N, d)
        return self.merge_heads(o, f"{name}.o")

    # --- the model ------------------------------------------------------------------------------------
    def embed(self, x: str) -> str:
        t = self._embed(x)  # (B, N, C)
        if self.rows:
            t = self.g.op("Reshape", [t, self.g.ints("rows.shape", [-1, self.c.dim])], name="rows_rs")  # (B*N, C)
        return t

    def _embed(self, x: str) -> str:
        c, g, sd, p = self.c, self.g, self.sd, self.c.patch_size
        side = c.image_size // p
        if "gemm_patches" not in self.rw:
            y = g.op("Conv", [x, self.w("patch_embed.weight", sd["patch_embed.weight"]),
                              self.w("patch_embed.bias", sd["patch_embed.bias"])],
                     name="patch_embed", kernel_shape=[p, p], strides=[p, p])  # (B, C, h, w)
            # the token count, not -1: with the batch copied (0), an empty batch left -1 undefined (0 / 0) in ONNX Runtime
            y = g.op("Reshape", [y, g.ints("embed.shape", [0, c.dim, c.num_tokens])], name="embed_rs")
            y = g.op("Transpose", [y], name="embed_t", perm=[0, 2, 1])  # (B, N, C)
            return g.op("Add", [y, self.w("pos_embed", sd["pos_embed"])], name="pos_add")
        # patches as rows: (B, 3, h, p, w, p) -> (B, h, w, 3, p, p) -> (B, N, 3 p p), one GEMM, bias in pos_embed
        y = g.op("Reshape", [x, g.ints("patchify.shape", [-1, c.in_chans, side, p, side, p])], name="patchify_rs")
        y = g.op("Transpose", [y], name="patchify_t", perm=[0, 2, 4, 1, 3, 5])
        y = g.op("Reshape", [y, g.ints("patches.shape", [-1, c.num_tokens, c.in_chans * p * p])], name="patches_rs")
        w = sd["patch_embed.weight"].reshape(c.dim, -1)  # (C, 3 p p), same (c, kh, kw) order
        y = g.op("MatMul", [y, self.w("patch_embed.weight_t", w.T)], name="patch_embed_matmul")
        return g.op("Add", [y, self.w("pos_embed_plus_bias", sd["pos_embed"] + sd["patch_embed.bias"])],
                    name="pos_add")

    def unembed(self, t: str) -> str:
        c, g, sd, p = self.c, self.g, self.sd, self.c.patch_size
        side = c.image_size // p
        w, b = sd["patch_unembed.weight"], sd["patch_unembed.bias"]  # (C, 3, p, p), (3,)
        if "gemm_patches" not in self.rw:
            if self.rows:
                t = g.op("Reshape", [t, g.ints("tokens.shape", [-1, c.num_tokens, c.dim])], name="tokens_rs")
            y = g.op("Transpose", [t], name="unembed_t", perm=[0, 2, 1])
            y = g.op("Reshape", [y, g.ints("unembed.shape", [0, c.dim, side, side])], name="unembed_rs")  # -> (B, 3+F, H, W)
            return g.op("ConvTranspose", [y, self.w("patch_unembed.weight", w), self.w("patch_unembed.bias", b)],
                        name="patch_unembed", kernel_shape=[p, p], strides=[p, p])
        y = self.linear(t, w.reshape(c.dim, -1).T, np.repeat(b, p * p), "patch_unembed")  # (.., 3 p p)
        y = g.op("Reshape", [y, g.ints("unpatch.shape", [-1, side, side, c.out_chans, p, p])], name="unpatch_rs")
        y = g.op("Transpose", [y], name="unpatch_t", perm=[0, 3, 1, 4, 2, 5])  # (B, 3, h, p, w, p)
        return g.op("Reshape", [y, g.ints("image.shape", [-1, c.out_chans, c.image_size, c.image_size])],
                    name="image_rs")

    def moe(self, h: str, i: int) -> str:
        c, g, sd, rw = self.c, self.g, self.sd, self.rw
        pre = f"blocks.{i}.attn"
        ex = [f"{pre}.experts.{e}" for e in range(c.num_experts)]
        scale = 1.0 / math.sqrt(c.head_dim)
        q_scale, attn_scale = (scale, 1.0) if "fold_scale" in rw else (1.0, scale)
        r0, r2 = f"{pre}.router.routing_net.0", f"{pre}.router.routing_net.2"

        fold_kv = "fold_kv_bias" in rw

        def wb(name: str, t: str) -> tuple[np.ndarray, np.ndarray | None]:
            s_ = q_scale if t == "q" else 1.0
            b = sd[f"{name}.W_{t}.bias"] * s_
            return sd[f"{name}.W_{t}.weight"] * s_, (None if fold_kv and t in "kv" else b)

        def out_bias(name: str) -> np.ndarray:  # the expert's output bias, with its value bias moved in if folded
            b = sd[f"{name}.W_out.bias"]
            return b + sd[f"{name}.W_out.weight"] @ sd[f"{name}.W_v.bias"] if fold_kv else b

        if "fuse_qkv" in rw:  # one GEMM: [q_0 k_0 v_0 | q_1 k_1 v_1 | ... | router hidden]
            pairs = [wb(name, t) for name in ex for t in "qkv"] + [(sd[f"{r0}.weight"], sd[f"{r0}.bias"])]
            biases = [np.zeros(w.shape[0]) if b is None else b for w, b in pairs]
            proj = self.linear(h, np.concatenate([w for w, _ in pairs]), np.concatenate(biases), f"{pre}.qkv_router")
            sizes = [c.dim] * (3 * c.num_experts) + [c.router_hidden]
            parts = g.op("Split", [proj, g.ints(f"{pre}.split", sizes)], name=f"{pre}_split", outputs=len(sizes),
                         axis=-1)
            qkv, hid = [parts[3 * e : 3 * e + 3] for e in range(c.num_experts)], parts[-1]
        else:
            qkv = [[self.linear(h, *wb(name, t), f"{name}.W_{t}") for t in "qkv"] for name in ex]
            hid = self.linear(h, sd[f"{r0}.weight"], sd[f"{r0}.bias"], r0)
        hid = g.op("Relu", [hid], name=f"{r0}_relu")
        logits = self.cast(self.linear(hid, sd[f"{r2}.weight"], sd[f"{r2}.bias"], r2), True, f"{pre}.router")
        probs = self.cast(g.op("Softmax", [logits], name=f"{pre}.router_softmax", axis=-1), False,
                          f"{pre}.router_p")  # (B, N, E)
        outs = [self.attention(*qkv[e], c.expert_topk[e], attn_scale, f"{name}.attn")
                for e, name in enumerate(ex)]  # each (B, N, C)
        wm, bm = sd[f"{pre}.merge_proj.weight"], sd[f"{pre}.merge_proj.bias"]

        def p_of(e: int, name: str) -> str:  # expert e's routing probability, (B, N, 1)
            return g.op("Slice", [probs, g.ints(f"{name}.p_start", [e]), g.ints(f"{name}.p_end", [e + 1]),
                                  g.ints(f"{name}.p_axis", [-1])], name=f"{name}_p")

        def total(terms: list[str], name: str) -> str:  # t_0 + t_1 + ... as a chain of Adds
            y = terms[0]
            for t in terms[1:]:
                y = g.op("Add", [y, t], name=name)
            return y

        if "fold_merge" not in rw:
            mixed = total([g.op("Mul", [p_of(e, name), self.linear(outs[e], sd[f"{name}.W_out.weight"],
                                                                   out_bias(name), f"{name}.W_out")],
                                name=f"{name}_weighted") for e, name in enumerate(ex)], f"{pre}_mix")
            return self.linear(mixed, wm, bm, f"{pre}.merge_proj")

        # merge_proj folded: sum_e (p_e o_e) (W_m W_e)^T + p @ B_fold
        w_fold = [wm @ sd[f"{name}.W_out.weight"] for name in ex]  # E x (C, C)
        # b_m moves into every expert's bias: sum_e p_e (W_m b_e + b_m) = sum_e p_e W_m b_e + b_m as sum_e p_e = 1
        b_fold = np.stack([wm @ out_bias(name) + bm for name in ex])  # (E, C)
        if not self.rows:  # one GEMM per expert, summed: no (B, N, E C) concatenation to copy into
            y = total([self.linear(g.op("Mul", [outs[e], p_of(e, name)], name=f"{name}_weighted"), w_fold[e], None,
                                   f"{name}.out_folded") for e, name in enumerate(ex)], f"{pre}_sum")
            bias = g.op("MatMul", [probs, self.w(f"{pre}.out_bias_per_expert", b_fold)], name=f"{pre}_bias_mix")
            return g.op("Add", [y, bias], name=f"{pre}_add_bias")
        # rows2d: one Gemm over [p_0 o_0 | p_1 o_1 | ... | p] @ [W_fold | B_fold]^T, the bias mix riding along
        cat = g.op("Concat", outs, name=f"{pre}_concat", axis=-1)  # (B*N, E C)
        cat = g.op("Reshape", [cat, g.ints(f"{pre}.split_experts", [-1, c.num_experts, c.dim])], name=f"{pre}_rs")
        pw = g.op("Unsqueeze", [probs, g.ints(f"{pre}.unsq_axis", [-1])], name=f"{pre}_p")  # (B*N, E, 1)
        cat = g.op("Mul", [cat, pw], name=f"{pre}_weighted")
        cat = g.op("Reshape", [cat, g.ints(f"{pre}.join_experts", [-1, c.num_experts * c.dim])], name=f"{pre}_rs2")
        cat = g.op("Concat", [cat, probs], name=f"{pre}_concat_p", axis=-1)  # (B*N, E C + E)
        return self.linear(cat, np.concatenate(w_fold + [b_fold.T], axis=1), None, f"{pre}.out_merged")

    def refine(self, x: str, y: str) -> str:
        """y + conv3(relu(conv2(relu(conv1([x, y, features]))))): the full-resolution refinement head.

        ``y`` is the un-embedding's output (B, 3 + F, H, W); its first 3 channels are the prediction."""
        g, sd, c = self.g, self.sd, self.c
        h = g.op("Concat", [x, y], name="refine_in", axis=1)  # [x, prediction, features]
        if c.refine_features:
            y = g.op("Slice", [y, g.ints("pred.start", [0]), g.ints("pred.end", [c.in_chans]), g.ints("pred.axis", [1])],
                     name="prediction")
        for i in (0, 2, 4):
            h = g.op("Conv", [h, self.w(f"refine.{i}.weight", sd[f"refine.{i}.weight"]),
                              self.w(f"refine.{i}.bias", sd[f"refine.{i}.bias"])],
                     name=f"refine.{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            if i < 4:
                h = g.op("Relu", [h], name=f"refine.{i}_relu")
        return g.op("Add", [y, h], name="refine_add")

    def build(self) -> Any:
        from onnx import TensorProto, helper

        c, g, sd, o = self.c, self.g, self.sd, self.o
        x = o.input_name
        xin = self.cast(x, False, "input")
        t = self.embed(xin)
        for i in range(c.depth):
            pre = f"blocks.{i}"
            t = g.op("Add", [t, self.moe(self.layer_norm(t, f"{pre}.norm1"), i)], name=f"{pre}_res1")
            f = self.linear(self.layer_norm(t, f"{pre}.norm2"), sd[f"{pre}.ffn.0.weight"], sd[f"{pre}.ffn.0.bias"],
                            f"{pre}.ffn.0")
            f = self.linear(self.gelu(f, f"{pre}.ffn.gelu"), sd[f"{pre}.ffn.2.weight"], sd[f"{pre}.ffn.2.bias"],
                            f"{pre}.ffn.2")
            t = g.op("Add", [t, f], name=f"{pre}_res2")
        y = self.unembed(t)  # (B, 3, H, W)
        if c.refine_channels:
            y = self.refine(xin, y)
        y = self.cast(y, True, "output")
        if c.residual:
            y = g.op("Sub", [x, y], name="residual")
        y = g.op("Clip", [y, self.f32("clip.min", 0.0), self.f32("clip.max", 1.0)], name="clamp")
        self.g.nodes[-1].output[0] = o.output_name
        batch = "batch" if o.dynamic_batch else 1
        shape = [batch, c.in_chans, c.image_size, c.image_size]
        return g.model([helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                       [helper.make_tensor_value_info(o.output_name, TensorProto.FLOAT, shape)],
                       doc=f"moe-denoise SmallViT '{c.name}', flavour {o.flavor}, rewrites {list(o.active_rewrites)}")


@dataclass
class OnnxGraph:
    """An exported graph and the exporter's notes about it (decisions worth reporting, kept in the manifest)."""

    proto: Any
    notes: list[str]


def export_graph(model: Any, opts: ExportOptions | None = None) -> OnnxGraph:
    """The ONNX graph of ``model`` (a SmallViT) under ``opts``, with the exporter's notes.

    Raises InputError for options the exporter does not support."""
    opts = opts or ExportOptions()
    opts.validate()
    writer = _Writer(model, opts)
    n = model.config.num_tokens
    if opts.flavor == "plugin" and not any(k < n for k in model.config.expert_topk):
        writer.notes.append(f"no expert is sparse at N = {n} tokens (k >= N for all): the plugin graph has no "
                            f"plugin node")
    proto = writer.build()
    return OnnxGraph(proto, writer.notes)


def build_onnx(model: Any, opts: ExportOptions | None = None) -> Any:
    """The onnx.ModelProto of ``model`` (a SmallViT) under ``opts`` (``export_graph`` also returns the notes)."""
    return export_graph(model, opts).proto
