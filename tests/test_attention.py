import torch
import torch.nn.functional as F

from course_lib.attention import CausalSelfAttention, attention_reference, causal_mask


def test_reference_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=g) for _ in range(3))
    for causal in (True, False):
        ours = attention_reference(q, k, v, causal=causal)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_weights_are_causal_distributions():
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    _, w = attention_reference(q, k, v, return_weights=True)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, 6))
    assert (w.masked_select(~causal_mask(6)) == 0).all()


def test_module_paths_agree_and_weights_shape():
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4).eval()
    x = torch.randn(2, 7, 32)
    fast = attn(x)
    attn.use_sdpa = False
    assert torch.allclose(fast, attn(x), atol=1e-6)
    assert attn.attention_weights(x).shape == (2, 4, 7, 7)
