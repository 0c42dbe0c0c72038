//! gpt-oss on the local engine against llama.cpp (`llama-cpp-python`), on a
//! random-weight GGUF of gpt-oss's structure written by the official `gguf`
//! library (`tests/clients/python/gpt_oss_gguf.py`: small dimensions, real
//! metadata and tensor names, MXFP4 experts, attention sinks, YaRN, a
//! sliding window shorter than the prompt): the logits agree at every
//! position.

use crate::local_common::{self, limit_threads};

use std::process::Command;

use candle_core::{Device, Tensor};
use clawpen_inference::engine::local::gguf;
use clawpen_inference::engine::local::model::KvCache;
use serde_json::Value;

use crate::common::clients::{clients_dir, python, require_python, run_python_code};
use crate::common::llama::INSTALL;

/// llama.cpp's logits at every position of the token ids in `argv[2]`
/// (JSON), fed one at a time as the engine decodes, f32 keys and values.
const LLAMA_CPP: &str = r#"
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False,
            type_k=0, type_v=0, logits_all=True)
tokens = json.loads(sys.argv[2])
for t in tokens:
    llm.eval([t])
print(json.dumps({"logits": [list(map(float, llm.scores[i])) for i in range(len(tokens))]}))
"#;

/// How far our logits may be from llama.cpp's, relative to the largest
/// logit: the experts are MXFP4 in the file and Q8_0 here (requantized,
/// see `engine::local::mxfp4`), and both quantize activations for the
/// quantized matmuls in their own way. Measured: 0.35%. Reading the
/// experts as if they were unquantized moves the logits by ~3.5%; a
/// missing sink, bias, YaRN scale or window by more.
const RELATIVE_TOLERANCE: f32 = 0.01;

#[test]
fn gpt_oss_logits_agree_with_llama_cpp_at_every_position() {
    limit_threads();
    require_python(&["llama_cpp", "gguf", "numpy"], INSTALL);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt-oss-tiny.gguf");
    let out = Command::new(python())
        .arg(clients_dir().join("python/gpt_oss_gguf.py"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = gguf::load(&path, &Device::Cpu).unwrap();
    assert_eq!(model.architecture.as_str(), "gpt-oss");
    // Past the 8-token window of the even layers.
    let tokens: Vec<u32> = (0..24u32).map(|i| 20 + (i * 37) % 200).collect();
    let theirs = run_python_code(
        LLAMA_CPP,
        &[
            &path.display().to_string(),
            &serde_json::to_string(&tokens).unwrap(),
        ],
    );
    let theirs: Vec<Vec<f32>> = theirs["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v: &Value| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let mut cache = KvCache::default();
    let (mut worst, mut same) = (0f32, 0);
    for (i, token) in tokens.iter().enumerate() {
        let input = Tensor::new(&[*token], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ours: Vec<f32> = model
            .weights
            .forward(&input, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let theirs = &theirs[i];
        assert_eq!(ours.len(), theirs.len());
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = ours
            .iter()
            .zip(theirs)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff / scale);
        same += usize::from(local_common::argmax(&ours) == local_common::argmax(theirs));
        assert!(
            diff <= RELATIVE_TOLERANCE * scale,
            "position {i}: logits {diff} apart (largest logit {scale})"
        );
    }
    eprintln!(
        "gpt-oss vs llama.cpp: largest difference {:.4} of the largest logit; \
         same best token at {same}/{} positions",
        worst,
        tokens.len()
    );
}
