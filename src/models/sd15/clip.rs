//! CLIP text transformer (transformers' `CLIPTextModel`), keys `text_model.*`.
//! Pre-LN layers, causal self-attention, quick-GELU MLP, final layer norm. SD conditions on
//! `last_hidden_state` (after the final LN). There is no padding mask: the SD pipeline passes
//! none, so padding positions attend causally and are part of the conditioning.

use anyhow::{bail, Result};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::config::ClipTextConfig;
use super::layers::{multi_head_attention, quick_gelu, AttentionKernels, GpuAttention, LayerNorm, Linear};
use super::weights::Loader;

struct EncoderLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

pub struct ClipTextModel<B: Backend> {
    pub config: ClipTextConfig,
    token_embedding: Tensor<B, 2>,
    position_embedding: Tensor<B, 2>,
    layers: Vec<EncoderLayer<B>>,
    final_layer_norm: LayerNorm<B>,
    /// GPU routines of the (causal, so always blocked) attention: its matmuls.
    attention_kernels: AttentionKernels,
}

/// Outputs of one forward pass.
pub struct ClipOutput<B: Backend> {
    /// `[n, L, hidden]`, after the final layer norm: SD's conditioning.
    pub last_hidden_state: Tensor<B, 3>,
    /// Embeddings, then each layer's output (before the final LN), as transformers returns.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

impl<B: Backend> ClipTextModel<B> {
    pub fn load(ld: &mut Loader<B>, config: &ClipTextConfig) -> Result<Self> {
        let c = config;
        c.check_supported()?;
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let e = "text_model.embeddings";
        let token_embedding = ld.tensor(&format!("{e}.token_embedding.weight"), [c.vocab_size, h]);
        let position_embedding = ld.tensor(&format!("{e}.position_embedding.weight"), [c.max_position_embeddings, h]);
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("text_model.encoder.layers.{i}");
                let lin = |ld: &mut Loader<B>, name: &str, a, b| Linear::load(ld, &format!("{p}.{name}"), a, b, true);
                EncoderLayer {
                    layer_norm1: LayerNorm::load(ld, &format!("{p}.layer_norm1"), h, eps),
                    q_proj: lin(ld, "self_attn.q_proj", h, h),
                    k_proj: lin(ld, "self_attn.k_proj", h, h),
                    v_proj: lin(ld, "self_attn.v_proj", h, h),
                    out_proj: lin(ld, "self_attn.out_proj", h, h),
                    layer_norm2: LayerNorm::load(ld, &format!("{p}.layer_norm2"), h, eps),
                    fc1: lin(ld, "mlp.fc1", h, c.intermediate_size),
                    fc2: lin(ld, "mlp.fc2", c.intermediate_size, h),
                }
            })
            .collect();
        let final_layer_norm = LayerNorm::load(ld, "text_model.final_layer_norm", h, eps);
        let attention_kernels = AttentionKernels { attention: GpuAttention::Blocked, ..ld.attention_kernels() };
        Ok(Self { config: config.clone(), token_embedding, position_embedding, layers, final_layer_norm, attention_kernels })
    }

    /// Runs the encoder on token ids (each row the same length, at most the position count).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Result<ClipOutput<B>> {
        let device = self.token_embedding.device();
        let n = ids.len();
        let l = ids.first().map_or(0, Vec::len);
        if n == 0 || l == 0 || ids.iter().any(|r| r.len() != l) || l > self.config.max_position_embeddings {
            bail!(
                "text encoder input must be {n} non-empty rows of equal length <= {}",
                self.config.max_position_embeddings
            );
        }
        if let Some(&bad) = ids.iter().flatten().find(|&&t| t as usize >= self.config.vocab_size) {
            bail!("token id {bad} is outside the text encoder's vocabulary of {}: tokenizer and text_encoder do not match", self.config.vocab_size);
        }
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, l]), &device);
        let tok = burn::tensor::module::embedding(self.token_embedding.clone(), idx);
        let mut x = tok + self.position_embedding.clone().narrow(0, 0, l).unsqueeze::<3>();

        // Causal mask: position i may not attend to j > i.
        let causal: Vec<bool> = (0..l * l).map(|k| k % l > k / l).collect();
        let heads = self.config.num_attention_heads;
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(causal, [l, l]), &device)
            .unsqueeze::<4>()
            .expand([n, heads, l, l]);

        let mut hidden_states = vec![x.clone()];
        for layer in &self.layers {
            let h = layer.layer_norm1.forward(x.clone());
            let a = multi_head_attention(
                layer.q_proj.forward(h.clone()),
                layer.k_proj.forward(h.clone()),
                layer.v_proj.forward(h),
                heads,
                Some(mask.clone()),
                self.attention_kernels,
            );
            x = x + layer.out_proj.forward(a);
            let h = layer.fc1.forward(layer.layer_norm2.forward(x.clone()));
            let h = if self.config.hidden_act == "gelu" { gelu(h) } else { quick_gelu(h) };
            x = x + layer.fc2.forward(h);
            hidden_states.push(x.clone());
        }
        Ok(ClipOutput { last_hidden_state: self.final_layer_norm.forward(x), hidden_states })
    }
}
