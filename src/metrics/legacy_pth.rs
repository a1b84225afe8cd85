//! A minimal reader for PyTorch's *legacy* (pre-1.6, non-zip) `torch.save` format, enough for
//! state dicts of plain tensors such as the LPIPS heads `alex.pth` (lpips 0.1.4 wheel,
//! `lpips/weights/v0.1/alex.pth`, sha256 `df73285e…35c0`).
//!
//! Layout: five consecutive pickles (magic number, protocol version, sys info, the object with
//! storages as persistent ids `('storage', torch.FloatStorage, key, location, numel, None)`,
//! the list of storage keys), then each storage in that list's order as an i64 element count and
//! the raw little-endian data. Only the pickle opcodes such files use are implemented; anything
//! else is an error, never a panic. Zip-format `.pth` files (torch >= 1.6) are not read here:
//! convert them once with
//! `python -c "import torch,sys;from safetensors.torch import save_file;save_file({k:v.float().contiguous() for k,v in torch.load(sys.argv[1],map_location='cpu').items()},sys.argv[2])" IN.pth OUT.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use super::weights::TensorStore;
use super::{MetricError, MetricResult};

#[derive(Clone, Debug)]
#[allow(dead_code)] // payloads are kept for debugging output
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Persistent(Box<Value>),
    Tensor { storage: Box<Value>, offset: usize, size: Vec<usize>, stride: Vec<usize> },
    Object,
    Mark,
}

fn err(source: &str, msg: impl std::fmt::Display) -> MetricError {
    MetricError::Weights(format!("{source}: legacy torch file: {msg}"))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    src: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> MetricResult<&'a [u8]> {
        // `pos <= len` always holds, so this cannot overflow however large `n` is.
        if n > self.b.len() - self.pos {
            return Err(err(self.src, "unexpected end of file"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> MetricResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> MetricResult<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> MetricResult<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn line(&mut self) -> MetricResult<String> {
        let start = self.pos;
        while self.u8()? != b'\n' {}
        Ok(String::from_utf8_lossy(&self.b[start..self.pos - 1]).into_owned())
    }
    fn string(&mut self, n: usize) -> MetricResult<String> {
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// Runs one pickle up to STOP.
    fn pickle(&mut self) -> MetricResult<Value> {
        let mut stack: Vec<Value> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        let src = self.src;
        let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| err(src, "pickle stack underflow"));
        let pop_mark = |stack: &mut Vec<Value>| -> MetricResult<Vec<Value>> {
            let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| err(src, "pickle MARK missing"))?;
            let items = stack.split_off(at + 1);
            stack.pop();
            Ok(items)
        };
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                b'.' => return pop(&mut stack),
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    stack.push(Value::Int(v as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    stack.push(Value::Int(v as i64))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let bytes = self.take(n)?;
                    // Keep the low 64 bits (enough for element counts; the magic number is compared as is).
                    let mut v: i128 = 0;
                    for (i, &b) in bytes.iter().enumerate().take(16) {
                        v |= (b as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    stack.push(Value::Int(v as i64))
                }
                b'G' => {
                    let s = self.take(8)?;
                    stack.push(Value::Float(f64::from_be_bytes(s.try_into().unwrap())))
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s))
                }
                b'T' | b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s))
                }
                b'}' => stack.push(Value::Dict(Vec::new())),
                b']' => stack.push(Value::List(Vec::new())),
                b')' => stack.push(Value::Tuple(Vec::new())),
                b'(' => stack.push(Value::Mark),
                b't' => {
                    let items = pop_mark(&mut stack)?;
                    stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(err(src, "pickle stack underflow"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(items))
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    memo.insert(k, stack.last().cloned().ok_or_else(|| err(src, "PUT on empty stack"))?);
                }
                b'r' => {
                    let k = self.u32()?;
                    memo.insert(k, stack.last().cloned().ok_or_else(|| err(src, "PUT on empty stack"))?);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    stack.push(memo.get(&k).cloned().ok_or_else(|| err(src, format!("memo key {k} missing")))?)
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err(err(src, "APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = pop_mark(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err(err(src, "APPENDS to a non-list")),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = pop(&mut stack)?;
                        let k = pop(&mut stack)?;
                        vec![k, v]
                    } else {
                        pop_mark(&mut stack)?
                    };
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        _ => return Err(err(src, "SETITEM on a non-dict")),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    stack.push(Value::Global(module, name))
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    stack.push(Value::Persistent(Box::new(pid)))
                }
                b'R' | 0x81 => {
                    let args = pop(&mut stack)?;
                    let callable = pop(&mut stack)?;
                    stack.push(reduce(src, callable, args)?)
                }
                b'b' => {
                    pop(&mut stack)?; // BUILD: state (e.g. OrderedDict._metadata) is not needed
                }
                other => return Err(err(src, format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1))),
            }
        }
    }
}

fn as_usizes(src: &str, v: &Value) -> MetricResult<Vec<usize>> {
    match v {
        Value::Tuple(t) | Value::List(t) => t
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(err(src, "expected a non-negative integer tuple")),
            })
            .collect(),
        _ => Err(err(src, "expected a tuple")),
    }
}

fn reduce(src: &str, callable: Value, args: Value) -> MetricResult<Value> {
    let Value::Tuple(args) = args else { return Ok(Value::Object) };
    match &callable {
        Value::Global(m, n) if m == "collections" && n == "OrderedDict" => {
            let mut d = Vec::new();
            if let Some(Value::List(pairs)) = args.first() {
                for p in pairs {
                    match p {
                        Value::List(kv) | Value::Tuple(kv) if kv.len() == 2 => d.push((kv[0].clone(), kv[1].clone())),
                        _ => return Err(err(src, "OrderedDict item is not a pair")),
                    }
                }
            }
            Ok(Value::Dict(d))
        }
        Value::Global(m, n) if m == "torch._utils" && (n == "_rebuild_tensor_v2" || n == "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(err(src, "_rebuild_tensor with too few arguments"));
            }
            let offset = match args[1] {
                Value::Int(i) if i >= 0 => i as usize,
                _ => return Err(err(src, "bad storage offset")),
            };
            Ok(Value::Tensor {
                storage: Box::new(args[0].clone()),
                offset,
                size: as_usizes(src, &args[2])?,
                stride: as_usizes(src, &args[3])?,
            })
        }
        _ => Ok(Value::Object),
    }
}

/// Element size and converter of a storage class name.
fn storage_kind(src: &str, class: &str) -> MetricResult<usize> {
    match class {
        "FloatStorage" => Ok(4),
        "DoubleStorage" => Ok(8),
        "HalfStorage" => Ok(2),
        other => Err(err(src, format!("unsupported storage type {other}"))),
    }
}

fn decode(class_size: usize, raw: &[u8]) -> Vec<f32> {
    match class_size {
        4 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        8 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        _ => raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}

/// Reads a legacy-format `.pth` state dict of float tensors into a [`TensorStore`].
pub fn read_legacy_pth(path: impl AsRef<Path>) -> MetricResult<TensorStore> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| MetricError::Weights(format!("cannot read {}: {e}", path.display())))?;
    read_legacy_pth_bytes(&bytes, &path.display().to_string())
}

/// [`read_legacy_pth`] on bytes; `source` names them in errors.
pub fn read_legacy_pth_bytes(bytes: &[u8], source: &str) -> MetricResult<TensorStore> {
    if bytes.starts_with(b"PK") {
        return Err(err(source, "this is a zip-format (torch >= 1.6) file, not the legacy format; convert it to safetensors (see the module docs)"));
    }
    // Magic number 0x1950a86a20f9469cfc6c as a protocol-2 pickle: PROTO 2, LONG1 10 bytes.
    const MAGIC: [u8; 12] = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    if bytes.len() < 14 || bytes[0] != 0x80 || bytes[2..14] != MAGIC {
        return Err(err(source, "missing torch magic number (not a legacy torch.save file)"));
    }
    let mut r = Reader { b: bytes, pos: 0, src: source };
    r.pickle()?; // magic number
    r.pickle()?; // protocol version
    r.pickle()?; // sys info
    let obj = r.pickle()?;
    let keys = match r.pickle()? {
        Value::List(k) => k,
        _ => return Err(err(source, "missing storage key list")),
    };
    // Storages, in the order of the key list.
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new(); // key -> (byte pos, numel)
    let mut elem_sizes: HashMap<String, usize> = HashMap::new();
    // Element sizes come from the persistent ids in `obj`.
    let Value::Dict(items) = obj else { return Err(err(source, "top-level object is not a (state) dict")) };
    for (_, v) in &items {
        if let Value::Tensor { storage, .. } = v {
            if let Value::Persistent(pid) = storage.as_ref() {
                if let Value::Tuple(t) = pid.as_ref() {
                    if let (Some(Value::Global(_, class)), Some(Value::Str(key))) = (t.get(1), t.get(2)) {
                        if t.get(5).map(|v| !matches!(v, Value::None)).unwrap_or(false) {
                            return Err(err(source, "storage views are not supported"));
                        }
                        elem_sizes.insert(key.clone(), storage_kind(source, class)?);
                    }
                }
            }
        }
    }
    for k in keys {
        let Value::Str(key) = k else { return Err(err(source, "storage key is not a string")) };
        let numel = {
            let s = r.take(8)?;
            i64::from_le_bytes(s.try_into().unwrap())
        };
        if numel < 0 {
            return Err(err(source, "negative storage size"));
        }
        let es = *elem_sizes.get(&key).unwrap_or(&4);
        let pos = r.pos;
        let len = usize::try_from(numel).ok().and_then(|n| n.checked_mul(es)).ok_or_else(|| err(source, format!("storage {key}: size {numel} is too large")))?;
        r.take(len)?;
        storages.insert(key, (pos, numel as usize));
    }
    let mut store = TensorStore::new(source.to_string());
    for (k, v) in items {
        let (Value::Str(name), Value::Tensor { storage, offset, size, stride }) = (k, v) else { continue };
        let Value::Persistent(pid) = *storage else { return Err(err(source, format!("{name}: storage is not a persistent id"))) };
        let Value::Tuple(t) = *pid else { return Err(err(source, format!("{name}: bad persistent id"))) };
        let Some(Value::Str(key)) = t.get(2) else { return Err(err(source, format!("{name}: bad storage key"))) };
        let &(pos, numel) = storages.get(key).ok_or_else(|| err(source, format!("{name}: storage {key} missing")))?;
        // A storage whose persistent id names no storage class has no element size.
        let es = *elem_sizes.get(key).ok_or_else(|| err(source, format!("{name}: storage {key} has no storage class in its persistent id")))?;
        // In bounds: the storage loop took exactly `numel * es` bytes at `pos`.
        let data = decode(es, &bytes[pos..pos + numel * es]);
        if size.len() != stride.len() {
            return Err(err(source, format!("{name}: size/stride rank mismatch")));
        }
        // A state dict's tensor never has more elements than its storage; checking that here
        // also bounds the allocation below by the file's own size.
        let count = size.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&c| c <= numel);
        let Some(count) = count else {
            return Err(err(source, format!("{name}: size {size:?} has more elements than its storage ({numel})")));
        };
        let mut out = Vec::with_capacity(count);
        let mut idx = vec![0usize; size.len()];
        for _ in 0..count {
            let at = idx.iter().zip(&stride).try_fold(offset, |a, (i, s)| i.checked_mul(*s).and_then(|v| a.checked_add(v)));
            out.push(*at.and_then(|at| data.get(at)).ok_or_else(|| err(source, format!("{name}: view exceeds its storage")))?);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        store.insert(name, size, out)?;
    }
    Ok(store)
}


#[cfg(test)]
mod tests {
    use super::*;

    // Pickle pieces for hand-made files (the layout of the module docs).
    fn x(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((s.len() as u32).to_le_bytes());
        v.extend(s.as_bytes());
        v
    }
    fn long8(i: i64) -> Vec<u8> {
        let mut v = vec![0x8a, 8];
        v.extend(i.to_le_bytes());
        v
    }
    fn tuple(items: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![b'('];
        items.iter().for_each(|i| v.extend(i));
        v.push(b't');
        v
    }
    /// A one-tensor state dict `w`: its storage `numel_declared` long in the header, with
    /// `data` after it, viewed with `size` / `stride`; `class` false leaves the storage class out.
    fn file(numel_declared: i64, data: &[u8], size: &[i64], stride: &[i64], class: bool) -> Vec<u8> {
        let mut f = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
        f.extend(b"\x80\x02M\xe9\x03.\x80\x02}.");
        let storage_class = if class { b"ctorch\nFloatStorage\n".to_vec() } else { b"N".to_vec() };
        let pid = [tuple(&[x("storage"), storage_class, x("0"), x("cpu"), long8(4), b"N".to_vec()]), b"Q".to_vec()].concat();
        let sizes = tuple(&size.iter().map(|&s| long8(s)).collect::<Vec<_>>());
        let strides = tuple(&stride.iter().map(|&s| long8(s)).collect::<Vec<_>>());
        f.extend(b"\x80\x02}(");
        f.extend(x("w"));
        f.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
        f.extend(tuple(&[pid, b"K\x00".to_vec(), sizes, strides]));
        f.extend(b"Ru.");
        f.extend(b"\x80\x02](");
        f.extend(x("0"));
        f.extend(b"e.");
        f.extend(numel_declared.to_le_bytes());
        f.extend(data);
        f
    }

    #[test]
    fn reads_a_strided_view() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = read_legacy_pth_bytes(&file(4, &data, &[2, 2], &[1, 2], true), "t.pth").unwrap();
        // The transpose of the storage.
        assert_eq!(s.get("w", &[2, 2]).unwrap().data, vec![1.0, 3.0, 2.0, 4.0]);
    }

    /// Hostile headers: each an error naming the file, none a panic, overflow or huge allocation.
    #[test]
    fn hostile_sizes_are_errors() {
        let data = [0u8; 16];
        let cases: [(&str, Vec<u8>); 6] = [
            ("no storage class", file(4, &data, &[4], &[1], false)),
            ("storage size wraps usize", file((1 << 62) - 1, &data, &[4], &[1], true)),
            ("view larger than its storage", file(4, &data, &[1 << 31, 1 << 31], &[1, 1], true)),
            ("size product overflows", file(4, &data, &[1 << 32, 1 << 32], &[1, 1], true)),
            ("strides overflow", file(4, &data, &[2, 2], &[1 << 62, 1 << 62], true)),
            ("truncated data", file(4, &data[..10], &[4], &[1], true)),
        ];
        for (what, bytes) in cases {
            let e = read_legacy_pth_bytes(&bytes, "bad.pth").err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(e.to_string().contains("bad.pth: legacy torch file"), "{what}: {e}");
        }
    }
}
