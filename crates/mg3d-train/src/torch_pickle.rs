//! State dicts saved by `torch.save` (`pytorch_model.bin`, the older Hugging Face layout), read
//! without Python.
//!
//! Since torch 1.6 such a file is a zip archive: `<name>/data.pkl` pickles the dict (protocol 2),
//! and each tensor's storage is the entry `<name>/data/<key>`, named by the pickle's persistent id
//! `("storage", torch.<Type>Storage, key, location, numel)`. Tensors are rebuilt by
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`. This module runs the
//! small part of the pickle machine those files use and refuses anything else by name, so an
//! unexpected file fails with a message rather than loading something wrong. The legacy (pre-1.6,
//! not zip) format is refused: re-save such a file with a current torch.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

/// Why a `torch.save` file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct PickleError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong, and what to do.
    pub detail: String,
}

/// A value on the pickle machine's stack.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage { kind: Kind, key: String },
    Tensor(TensorRef),
    Mark,
}

/// A tensor as the pickle describes it: a view of a storage.
#[derive(Clone, Debug)]
struct TensorRef {
    kind: Kind,
    key: String,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The tensors of a `torch.save`d state dict, in file order, on the CPU.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, PickleError> {
    let err = |detail: String| PickleError {
        path: path.to_path_buf(),
        detail,
    };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        err(format!(
            "not a zip archive ({e}); only torch >= 1.6 files are read: re-save it with torch.save or as safetensors"
        ))
    })?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| err("no data.pkl in the archive: not a torch.save file".into()))?;
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    let mut bytes = Vec::new();
    zip.by_name(&pkl)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
        .map_err(|e| err(format!("{pkl}: {e}")))?;
    let dict = Machine::default().run(&bytes).map_err(err)?;
    let Value::Dict(items) = dict else {
        return Err(err(format!(
            "the pickle holds {}, not a state dict",
            describe(&dict)
        )));
    };
    // Training checkpoints nest the weights: {"state_dict": {...}, "epoch": ...} (MONAI's
    // self-supervised Swin weights, Lightning) or {"model": {...}}.
    let nested = items.iter().position(|(k, v)| {
        matches!((k, v), (Value::Str(k), Value::Dict(_)) if k == "state_dict" || k == "model")
    });
    let items = match nested {
        Some(i) => match items.into_iter().nth(i) {
            Some((_, Value::Dict(inner))) => inner,
            _ => Vec::new(),
        },
        None => items,
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        let Value::Str(name) = k else {
            return Err(err(format!("a state dict key is {}", describe(&k))));
        };
        let Value::Tensor(t) = v else {
            // Metadata entries (e.g. a version number) are not tensors.
            continue;
        };
        if !storages.contains_key(&t.key) {
            let entry = format!("{prefix}data/{}", t.key);
            let mut raw = Vec::new();
            zip.by_name(&entry)
                .and_then(|mut f| f.read_to_end(&mut raw).map_err(Into::into))
                .map_err(|e| err(format!("{entry}: {e}")))?;
            let elem = t.kind.elt_size_in_bytes();
            let storage = Tensor::f_from_data_size(&raw, &[(raw.len() / elem) as i64], t.kind)
                .map_err(|e| err(format!("{entry}: {e}")))?;
            storages.insert(t.key.clone(), storage);
        }
        let tensor = storages[&t.key]
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))
            .and_then(|v| v.f_contiguous())
            .map_err(|e| err(format!("tensor {name}: {e}")))?;
        out.push((name, tensor));
    }
    Ok(out)
}

fn describe(v: &Value) -> String {
    match v {
        Value::Global(m, n) => format!("{m}.{n}"),
        other => format!("{other:?}").chars().take(60).collect(),
    }
}

/// The storage classes' element kinds (`torch.FloatStorage`, ...).
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// The pickle machine: a stack, a memo, and the few opcodes `torch.save` writes.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

/// The pickle's bytes and a position in them.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("the pickle ends early")?;
        self.at += n;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn line(&mut self) -> Result<String, String> {
        let end = self.b[self.at..]
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("the pickle ends early")?;
        let s = String::from_utf8_lossy(&self.b[self.at..self.at + end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
}

impl Machine {
    fn run(mut self, b: &[u8]) -> Result<Value, String> {
        let mut c = Cursor { b, at: 0 };
        loop {
            let op = c.byte()?;
            if op == b'.' {
                return self.pop(); // STOP
            }
            if !self.atom(op, &mut c)? && !self.structure(op, &mut c)? {
                return Err(format!(
                    "pickle opcode 0x{op:02x} at byte {} is not one torch.save writes for a state dict",
                    c.at - 1
                ));
            }
        }
    }

    /// Opcodes that push one value read from the stream; false if `op` is not one.
    fn atom(&mut self, op: u8, c: &mut Cursor) -> Result<bool, String> {
        let v = match op {
            0x80 => {
                c.byte()?; // PROTO
                return Ok(true);
            }
            b'}' => Value::Dict(Vec::new()),
            b']' => Value::List(Vec::new()),
            b')' => Value::Tuple(Vec::new()),
            b'(' => Value::Mark,
            b'N' => Value::None,
            0x88 | 0x89 => Value::Bool,
            b'K' => Value::Int(c.byte()? as i64),
            b'M' => {
                let s = c.take(2)?;
                Value::Int(u16::from_le_bytes([s[0], s[1]]) as i64)
            }
            b'J' => Value::Int(c.u32()? as i32 as i64),
            0x8a => {
                // LONG1: n little-endian two's-complement bytes.
                let n = c.byte()? as usize;
                let s = c.take(n)?;
                if n > 8 {
                    return Err("an integer wider than 64 bits".into());
                }
                let fill = if s.last().is_some_and(|x| x & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut buf = [fill; 8];
                buf[..n].copy_from_slice(s);
                Value::Int(i64::from_le_bytes(buf))
            }
            b'G' => {
                c.take(8)?;
                Value::Float
            }
            b'X' | 0x8c => {
                // BINUNICODE (4-byte length), SHORT_BINUNICODE (1-byte length).
                let n = if op == b'X' {
                    c.u32()? as usize
                } else {
                    c.byte()? as usize
                };
                let s = std::str::from_utf8(c.take(n)?).map_err(|e| e.to_string())?;
                Value::Str(s.to_string())
            }
            b'c' => {
                let module = c.line()?;
                Value::Global(module, c.line()?)
            }
            _ => return Ok(false),
        };
        self.stack.push(v);
        Ok(true)
    }

    /// Opcodes that work on the stack and the memo; false if `op` is not one.
    fn structure(&mut self, op: u8, c: &mut Cursor) -> Result<bool, String> {
        match op {
            b'q' => {
                let k = c.byte()? as u32;
                self.put(k)?
            }
            b'r' => {
                let k = c.u32()?;
                self.put(k)?
            }
            b'h' => {
                let k = c.byte()? as u32;
                self.get(k)?
            }
            b'j' => {
                let k = c.u32()?;
                self.get(k)?
            }
            b't' => {
                let items = self.pop_to_mark()?;
                self.stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err("a tuple of missing values".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(items))
            }
            b'Q' => {
                let pid = self.pop()?;
                self.stack.push(persistent(pid)?)
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.stack.push(reduce(callable, args)?)
            }
            b'b' => {
                // BUILD: an OrderedDict's `_metadata` and the like; the state is dropped.
                self.pop()?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.dict_top()?.push((k, v))
            }
            b'u' => {
                let items = self.pop_to_mark()?;
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of values".into());
                }
                let mut it = items.into_iter();
                let d = self.dict_top()?;
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            b'a' => {
                let v = self.pop()?;
                self.list_top()?.push(v)
            }
            b'e' => {
                let items = self.pop_to_mark()?;
                self.list_top()?.extend(items)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle's stack is empty".into())
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("no MARK on the pickle's stack")?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn put(&mut self, k: u32) -> Result<(), String> {
        let v = self.stack.last().ok_or("MEMO of an empty stack")?.clone();
        self.memo.insert(k, v);
        Ok(())
    }

    fn get(&mut self, k: u32) -> Result<(), String> {
        let v = self.memo.get(&k).ok_or(format!("memo {k} unset"))?.clone();
        self.stack.push(v);
        Ok(())
    }

    fn dict_top(&mut self) -> Result<&mut Vec<(Value, Value)>, String> {
        match self.stack.last_mut() {
            Some(Value::Dict(d)) => Ok(d),
            _ => Err("SETITEM(S) on something not a dict".into()),
        }
    }

    fn list_top(&mut self) -> Result<&mut Vec<Value>, String> {
        match self.stack.last_mut() {
            Some(Value::List(l)) => Ok(l),
            _ => Err("APPEND(S) on something not a list".into()),
        }
    }
}

/// A persistent id: `("storage", torch.<Type>Storage, key, location, numel)`.
fn persistent(pid: Value) -> Result<Value, String> {
    if let Value::Tuple(t) = &pid
        && let [Value::Str(tag), Value::Global(m, ty), Value::Str(key), ..] = t.as_slice()
        && tag == "storage"
        && m == "torch"
    {
        let kind = storage_kind(ty).ok_or(format!("storage type torch.{ty} is not supported"))?;
        return Ok(Value::Storage {
            kind,
            key: key.clone(),
        });
    }
    Err(format!("persistent id {} is not a storage", describe(&pid)))
}

fn ints(v: &Value) -> Result<Vec<i64>, String> {
    match v {
        Value::Tuple(t) | Value::List(t) => t
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(format!("{} in a size or stride", describe(other))),
            })
            .collect(),
        other => Err(format!("{} as a size or stride", describe(other))),
    }
}

/// The calls a state dict's pickle makes.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Err(format!("REDUCE of {}", describe(&callable)));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("{module}.{name} called without an argument tuple"));
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [
                Value::Storage { kind, key },
                Value::Int(offset),
                size,
                stride,
                ..,
            ] = args.as_slice()
            else {
                return Err(format!("{module}.{name} with unexpected arguments"));
            };
            Ok(Value::Tensor(TensorRef {
                kind: *kind,
                key: key.clone(),
                offset: *offset,
                size: ints(size)?,
                stride: ints(stride)?,
            }))
        }
        ("torch._utils", "_rebuild_parameter") => args
            .into_iter()
            .next()
            .ok_or_else(|| "_rebuild_parameter without data".into()),
        _ => Err(format!(
            "{module}.{name} is not a call torch.save makes for a state dict of tensors"
        )),
    }
}
