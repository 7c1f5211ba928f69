//! libtorch links and runs here without LD_LIBRARY_PATH: a 3D conv trains a step and a
//! VarStore round-trips through safetensors.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn conv3d_trains_and_checkpoints_round_trip() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = nn::conv3d(vs.root() / "conv", 1, 4, 3, Default::default());
    let x = Tensor::randn([2, 1, 8, 8, 8], (Kind::Float, Device::Cpu));
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let loss0 = conv.forward(&x).square().mean(Kind::Float);
    for _ in 0..5 {
        let loss = conv.forward(&x).square().mean(Kind::Float);
        opt.backward_step(&loss);
    }
    let loss1 = conv.forward(&x).square().mean(Kind::Float);
    assert!(
        loss1.double_value(&[]) < loss0.double_value(&[]),
        "the step lowered the loss"
    );

    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("w.safetensors");
    vs.save(&path).unwrap();
    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let conv2 = nn::conv3d(vs2.root() / "conv", 1, 4, 3, Default::default());
    vs2.load(&path).unwrap();
    let diff = (conv.forward(&x) - conv2.forward(&x))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(diff, 0.0);
}

#[test]
fn device_specs() {
    assert_eq!(
        mg3d_train::runtime::pick_device("cpu").unwrap(),
        Device::Cpu
    );
    assert!(mg3d_train::runtime::pick_device("gpu").is_err());
    let auto = mg3d_train::runtime::pick_device("auto").unwrap();
    assert_eq!(auto == Device::Cpu, !tch::Cuda::is_available());
    if !tch::Cuda::is_available() {
        let e = mg3d_train::runtime::pick_device("cuda:0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("CUDA is not available"), "{e}");
    }
    let d = mg3d_train::runtime::describe();
    assert!(d["cpu_threads"].as_i64().unwrap() >= 1);
}
