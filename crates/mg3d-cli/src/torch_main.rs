//! `mg3d-torch`: the `mg3d` command with libtorch: the stage kinds and commands that run on it
//! (train, eval, embed, predict, export-encoder, doctor, the train benchmark). `mg3d` hands them here.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use mg3d_core::StageRegistry;

mod apply;

struct WithTorch;

impl mg3d_cli::Torch for WithTorch {
    fn register(&self, registry: &mut StageRegistry) {
        registry.register(Arc::new(mg3d_train::stage::TrainStage));
        registry.register(Arc::new(mg3d_eval::stage::EvalStage));
    }

    fn export_encoder(&self, train_dir: &Path, out: &Path, prefix: &str) -> Result<String> {
        let trained = mg3d_train::stage::load_trained(train_dir, "cpu")?;
        mg3d_train::swin::export_encoder(trained.model.encoder(), out, prefix)?;
        Ok(format!(
            "the image encoder of {} -> {} with prefix {prefix:?}",
            train_dir.display(),
            out.display()
        ))
    }

    fn embed(&self, a: &mg3d_cli::scans::EmbedArgs, salt: &str, quiet: bool) -> Result<String> {
        apply::embed(a, salt, quiet)
    }

    fn predict(&self, a: &mg3d_cli::scans::PredictArgs, salt: &str, json: bool) -> Result<()> {
        apply::predict(a, salt, json)
    }

    fn describe(&self) -> serde_json::Value {
        mg3d_train::runtime::describe()
    }

    fn bench_train(&self, json: bool) -> Result<()> {
        bench_train(json)
    }
}

fn main() -> ExitCode {
    mg3d_cli::main(Some(&WithTorch))
}

/// Training step time on the CPU (random inputs): the tiny model's full five-objective step and the swin-b encoder's forward + backward at MG-3D's input size, batch 2.
fn bench_train(json: bool) -> Result<()> {
    let text = std::path::Path::new(".venv/minilm");
    if text.join("model.safetensors").is_file() {
        for (name, input, hidden, steps) in [
            ("tiny", [32i64, 64, 64], 64i64, 3usize),
            ("swin-b", [128, 96, 128], 768, 1),
        ] {
            let swin = mg3d_train::swin::SwinConfig::preset(name)?;
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let cfg = mg3d_train::model::ModelConfig {
                swin,
                hidden,
                fusion_layers: 2,
                pool_heads: 8,
                input,
                text_trainable: false,
            };
            let model = mg3d_train::model::Mg3d::new(&vs, cfg, text).map_err(anyhow::Error::msg)?;
            let l = 128i64;
            let inp = mg3d_train::model::Inputs {
                volume: tch::Tensor::rand(
                    [2, 1, input[0], input[1], input[2]],
                    (tch::Kind::Float, tch::Device::Cpu),
                ),
                input_ids: tch::Tensor::randint_low(
                    1000,
                    2000,
                    [2, l],
                    (tch::Kind::Int64, tch::Device::Cpu),
                ),
                attention_mask: tch::Tensor::ones([2, l], (tch::Kind::Int64, tch::Device::Cpu)),
                clause_index: tch::Tensor::arange(l, (tch::Kind::Int64, tch::Device::Cpu))
                    .floor_divide_scalar(16)
                    .unsqueeze(0)
                    .repeat([2, 1]),
                word_start: vec![vec![1i8; l as usize]; 2],
            };
            let obj = mg3d_train::model::Objectives::default();
            let mut secs = Vec::new();
            for s in 0..steps {
                let t0 = Instant::now();
                let losses = model.losses(&inp, &obj, s as u64);
                losses.total.backward();
                secs.push(t0.elapsed().as_secs_f64());
            }
            let mean = secs.iter().sum::<f64>() / secs.len() as f64;
            mg3d_cli::bench_row(
                &format!("train.step_seconds.{name}"),
                mean,
                "s",
                &format!(
                    "forward+backward, five objectives, batch 2, input {input:?}, hidden {hidden}, CPU"
                ),
                json,
            );
            mg3d_cli::bench_row(
                &format!("train.samples_per_s.{name}"),
                2.0 / mean,
                "samples/s",
                "",
                json,
            );
        }
    } else {
        eprintln!("train: skipped (no .venv/minilm; run `make setup`)");
    }
    Ok(())
}
