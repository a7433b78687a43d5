//! Test support: writes GGUF v3 headers (metadata and tensor table, no tensor data).

/// Writes GGUF v3 headers for tests.
#[derive(Default)]
pub(crate) struct Writer {
    kvs: Vec<u8>,
    kv_count: u64,
    tensors: Vec<u8>,
    tensor_count: u64,
}

impl Writer {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }

    pub(crate) fn text(mut self, key: &str, value: &str) -> Self {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(8u32.to_le_bytes());
        Self::string(&mut self.kvs, value);
        self.kv_count += 1;
        self
    }

    pub(crate) fn u32(mut self, key: &str, value: u32) -> Self {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(4u32.to_le_bytes());
        self.kvs.extend(value.to_le_bytes());
        self.kv_count += 1;
        self
    }

    pub(crate) fn string_array(mut self, key: &str, values: &[&str]) -> Self {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(9u32.to_le_bytes());
        self.kvs.extend(8u32.to_le_bytes());
        self.kvs.extend((values.len() as u64).to_le_bytes());
        for value in values {
            Self::string(&mut self.kvs, value);
        }
        self.kv_count += 1;
        self
    }

    pub(crate) fn f32_array(mut self, key: &str, values: &[f32]) -> Self {
        Self::string(&mut self.kvs, key);
        self.kvs.extend(9u32.to_le_bytes());
        self.kvs.extend(6u32.to_le_bytes());
        self.kvs.extend((values.len() as u64).to_le_bytes());
        for value in values {
            self.kvs.extend(value.to_le_bytes());
        }
        self.kv_count += 1;
        self
    }

    pub(crate) fn tensor(mut self, name: &str, dims: &[u64]) -> Self {
        Self::string(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for dim in dims {
            self.tensors.extend(dim.to_le_bytes());
        }
        self.tensors.extend(0u32.to_le_bytes());
        self.tensors.extend(0u64.to_le_bytes());
        self.tensor_count += 1;
        self
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.tensors);
        out
    }
}

pub(crate) fn llama_header() -> Writer {
    Writer::default()
        .text("general.architecture", "llama")
        .text("general.name", "Tiny")
        .u32("general.file_type", 15)
        .u32("llama.context_length", 4096)
        .string_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b"])
        .f32_array("tokenizer.ggml.scores", &[0.0, 0.0, -1.0, -2.0])
        .text("tokenizer.chat_template", &"x".repeat(5000))
        .tensor("token_embd.weight", &[64, 32])
        .tensor("blk.0.attn_norm.weight", &[64])
}
