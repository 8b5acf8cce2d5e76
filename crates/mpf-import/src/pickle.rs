//! numpy arrays out of a Python pickle (the detectron2 model-zoo `.pkl` format), on top of the
//! `repugnant-pickle` parser, which turns the opcodes into a tree of generic values without
//! executing anything.
//!
//! numpy pickles an array as `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` (module
//! `numpy._core.multiarray` since numpy 2) followed by a BUILD with the state
//! `(version, shape, dtype, is_fortran, raw_bytes)`; the dtype is `numpy.dtype(code, …)` built with
//! `(3, byte_order, …)`. The raw bytes are BINBYTES (protocol ≥ 3), a BINSTRING (Python 2 pickles),
//! or `_codecs.encode(text, 'latin1')` (Python 3 at protocol 2). At protocol 5 numpy writes
//! `numpy._core.numeric._frombuffer(buffer, dtype, shape, order)` instead.

use std::collections::BTreeMap;

use repugnant_pickle::{SequenceType, Value, ops::PickleOp};

use crate::store::HostTensor;

/// Every array of the pickle's state dict by name, with a flag for integer dtypes. The state dict
/// is the top-level dict's `model` entry when it has one, the top-level dict otherwise; entries
/// that are not arrays (`__author__`, scalars) are skipped.
pub(crate) fn numpy_state_dict(bytes: &[u8]) -> Result<BTreeMap<String, (HostTensor, bool)>, String> {
    let (_, ops) = repugnant_pickle::parse_ops::<nom::error::VerboseError<&[u8]>>(bytes)
        .map_err(|e| format!("not a pickle: {}", short(&format!("{e:?}"))))?;
    if ops.iter().any(|op| matches!(op, PickleOp::BINPERSID | PickleOp::PERSID(_))) {
        return Err("the pickle refers to persistent storage (a legacy torch.save file)".into());
    }
    // FRAME only delimits protocol-4 chunks; the evaluator would push it as a value.
    let ops: Vec<PickleOp> = ops.into_iter().filter(|op| !matches!(op, PickleOp::FRAME(_))).collect();
    let (values, _) = repugnant_pickle::evaluate(&ops, true).map_err(|e| format!("cannot evaluate the pickle: {e}"))?;
    let top = values.into_iter().last().ok_or("empty pickle")?;
    let mut entries = dict_entries(&top).ok_or("the pickle does not hold a dict")?;
    if let Some((_, model)) = entries.iter().find(|(k, _)| k == "model")
        && let Some(inner) = dict_entries(model)
    {
        entries = inner;
    }
    let mut out = BTreeMap::new();
    for (name, value) in entries {
        if let Some(array) = ndarray(value).map_err(|e| format!("`{name}`: {e}"))? {
            out.insert(name, array);
        }
    }
    if out.is_empty() {
        return Err("the pickle holds no numpy arrays".into());
    }
    Ok(out)
}

fn short(s: &str) -> &str {
    &s[..s.len().min(200)]
}

/// `(key, value)` pairs of a dict value (SETITEM adds `(k, v)`, SETITEMS a tuple of them).
fn dict_entries<'v, 'a>(v: &'v Value<'a>) -> Option<Vec<(String, &'v Value<'a>)>> {
    let Value::Seq(SequenceType::Dict, items) = v else { return None };
    let mut out = Vec::new();
    fn pairs<'v, 'a>(item: &'v Value<'a>, out: &mut Vec<(String, &'v Value<'a>)>) {
        if let Value::Seq(SequenceType::Tuple, parts) = item {
            match parts.as_slice() {
                [Value::String(k), v] => out.push((k.to_string(), v)),
                _ => parts.iter().for_each(|p| pairs(p, out)),
            }
        }
    }
    items.iter().for_each(|i| pairs(i, &mut out));
    Some(out)
}

/// `(module, name)` of a GLOBAL / STACK_GLOBAL value.
fn global_name(v: &Value<'_>) -> Option<(String, String)> {
    match v {
        Value::Raw(op) => match op.as_ref() {
            PickleOp::GLOBAL(module, name) => Some((module.to_string(), name.to_string())),
            _ => None,
        },
        // STACK_GLOBAL is evaluated to `Global((name, module), [])`.
        Value::Global(inner, args) if args.is_empty() => match inner.as_ref() {
            Value::Seq(SequenceType::Tuple, p) => match p.as_slice() {
                [Value::String(name), Value::String(module)] => Some((module.to_string(), name.to_string())),
                _ => None,
            },
            other => global_name(other),
        },
        _ => None,
    }
}

fn int(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Raw(_) => match repugnant_pickle::value::fix_value(v.clone()).ok()? {
            Value::Int(i) => Some(i),
            _ => None,
        },
        _ => None,
    }
}

fn text<'v>(v: &'v Value<'_>) -> Option<&'v str> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// The raw bytes of an array's state.
fn raw_bytes(v: &Value<'_>) -> Result<Vec<u8>, String> {
    match v {
        Value::Bytes(b) => Ok(b.to_vec()),
        // A Python 2 `str` that happened to be valid UTF-8: its bytes are the data.
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        // `_codecs.encode(text, 'latin1')`: every char is one byte.
        Value::Global(f, args) if global_name(f).is_some_and(|(m, n)| m == "_codecs" && n == "encode") => {
            match args.first() {
                Some(Value::Seq(SequenceType::Tuple, a)) => {
                    let s = a.first().and_then(text).ok_or("`_codecs.encode` without text")?;
                    s.chars()
                        .map(|c| u8::try_from(u32::from(c)).map_err(|_| "non-latin1 char in array data".into()))
                        .collect()
                }
                _ => Err("`_codecs.encode` without arguments".into()),
            }
        }
        Value::Raw(op) => match op.as_ref() {
            PickleOp::BINSTRING(b) | PickleOp::SHORT_BINSTRING(b) => Ok(b.to_vec()),
            other => Err(format!("unsupported array data {other:?}")),
        },
        _ => Err("array data is not bytes".into()),
    }
}

/// `Some((tensor, is_integer))` when `v` is a pickled numpy array, `None` for other values.
///
/// Protocols ≤ 4: `BUILD(_reconstruct(ndarray, (0,), b'b'), (version, shape, dtype, is_fortran,
/// data))`; protocol 5: `_frombuffer(buffer, dtype, shape, order)` (module `numpy.core.numeric`,
/// `numpy._core.numeric` since numpy 2).
fn ndarray(v: &Value<'_>) -> Result<Option<(HostTensor, bool)>, String> {
    match v {
        Value::Build(target, state) => {
            let Value::Global(f, _) = target.as_ref() else { return Ok(None) };
            let Some((module, name)) = global_name(f) else { return Ok(None) };
            if !(module.ends_with("multiarray") && name == "_reconstruct") {
                return Ok(None);
            }
            let Value::Seq(SequenceType::Tuple, st) = state.as_ref() else {
                return Err("array state is not a tuple".into());
            };
            let [_, shape, dtype, fortran, data] = st.as_slice() else {
                return Err(format!("array state has {} fields, expected 5", st.len()));
            };
            decode(shape, dtype, matches!(fortran, Value::Bool(true)), data).map(Some)
        }
        Value::Global(f, args) => {
            let Some((module, name)) = global_name(f) else { return Ok(None) };
            if !(module.ends_with("numeric") && name == "_frombuffer") {
                return Ok(None);
            }
            let Some(Value::Seq(SequenceType::Tuple, a)) = args.first() else {
                return Err("`_frombuffer` without arguments".into());
            };
            let [data, dtype, shape, order] = a.as_slice() else {
                return Err(format!("`_frombuffer` has {} arguments, expected 4", a.len()));
            };
            decode(shape, dtype, text(order) == Some("F"), data).map(Some)
        }
        _ => Ok(None),
    }
}

/// An array from its pickled shape tuple, dtype, memory order and raw bytes.
fn decode(shape: &Value<'_>, dtype: &Value<'_>, fortran: bool, data: &Value<'_>) -> Result<(HostTensor, bool), String> {
    let shape: Vec<usize> = match shape {
        Value::Seq(_, dims) => dims
            .iter()
            .map(|d| int(d).and_then(|d| usize::try_from(d).ok()).ok_or("bad dimension"))
            .collect::<Result<_, _>>()?,
        _ => return Err("array shape is not a tuple".into()),
    };
    let (code, order) = dtype_code(dtype)?;
    if order == ">" {
        return Err(format!("big-endian dtype {code} is not supported"));
    }
    let bytes = raw_bytes(data)?;
    let n: usize = shape.iter().product();
    let (size, is_int): (usize, bool) = match code.as_str() {
        "f4" | "i4" => (4, code.starts_with('i')),
        "f8" | "i8" => (8, code.starts_with('i')),
        "f2" | "i2" => (2, code.starts_with('i')),
        "i1" | "u1" | "b1" => (1, true),
        other => return Err(format!("unsupported dtype {other}")),
    };
    if bytes.len() != n * size {
        return Err(format!("{} data bytes for shape {shape:?} of {code} ({} expected)", bytes.len(), n * size));
    }
    let mut values: Vec<f32> = bytes
        .chunks_exact(size)
        .map(|c| match code.as_str() {
            "f4" => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            "f8" => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            "f2" => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            "i4" => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
            "i8" => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32,
            "i2" => i16::from_le_bytes([c[0], c[1]]) as f32,
            "i1" => c[0] as i8 as f32,
            _ => c[0] as f32,
        })
        .collect();
    if fortran && shape.len() > 1 {
        values = fortran_to_c(&values, &shape);
    }
    Ok((HostTensor { shape, data: values }, is_int))
}

/// `(code, byte order)` of a pickled `numpy.dtype('f4', False, True)` built with `(3, '<', …)`.
fn dtype_code(v: &Value<'_>) -> Result<(String, String), String> {
    let (target, state) = match v {
        Value::Build(t, s) => (t.as_ref(), Some(s.as_ref())),
        other => (other, None),
    };
    let Value::Global(_, args) = target else { return Err("array dtype is not a numpy dtype".into()) };
    let code = match args.first() {
        Some(Value::Seq(SequenceType::Tuple, a)) => a.first().and_then(text).ok_or("dtype without a code")?,
        _ => return Err("dtype without arguments".into()),
    };
    let order = match state {
        Some(Value::Seq(SequenceType::Tuple, s)) => s.get(1).and_then(text).unwrap_or("<"),
        _ => "<",
    };
    Ok((code.to_string(), order.to_string()))
}

/// Column-major values of `shape` in row-major order.
fn fortran_to_c(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = values.len();
    let mut out = vec![0f32; n];
    let mut index = vec![0usize; shape.len()];
    for (c_pos, slot) in out.iter_mut().enumerate() {
        let mut rem = c_pos;
        for d in (0..shape.len()).rev() {
            index[d] = rem % shape[d];
            rem /= shape[d];
        }
        let mut f_pos = 0;
        for d in (0..shape.len()).rev() {
            f_pos = f_pos * shape[d] + index[d];
        }
        *slot = values[f_pos];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_transposed_back() {
        // [[1, 2, 3], [4, 5, 6]] in column-major order.
        assert_eq!(fortran_to_c(&[1., 4., 2., 5., 3., 6.], &[2, 3]), vec![1., 2., 3., 4., 5., 6.]);
    }

    /// `tests/fixtures/pickle/protocol{2,3,4,5}.pkl`, written by numpy 2.4 under Python 3.11
    /// (`scripts/parity/make_pickle_fixtures.py`): every protocol gives the same arrays.
    #[test]
    fn every_pickle_protocol_gives_numpys_arrays() {
        let files: [&[u8]; 4] = [
            include_bytes!("../../../tests/fixtures/pickle/protocol2.pkl"),
            include_bytes!("../../../tests/fixtures/pickle/protocol3.pkl"),
            include_bytes!("../../../tests/fixtures/pickle/protocol4.pkl"),
            include_bytes!("../../../tests/fixtures/pickle/protocol5.pkl"),
        ];
        for (protocol, bytes) in (2..).zip(files) {
            let dict = numpy_state_dict(bytes).unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));
            let names: Vec<&str> = dict.keys().map(String::as_str).collect();
            // The numpy scalar and the string are not arrays: skipped.
            assert_eq!(
                names,
                ["conv.weight", "counter.i8", "fortran.f8", "half.f2", "mask.u1", "zero_dim"],
                "protocol {protocol}"
            );
            let get = |k: &str| dict[k].clone();
            let t = |shape: &[usize], data: &[f32], int: bool| {
                (HostTensor { shape: shape.to_vec(), data: data.to_vec() }, int)
            };
            assert_eq!(get("conv.weight"), t(&[2, 3], &[0., 0.25, 0.5, 0.75, 1., 1.25], false), "protocol {protocol}");
            assert_eq!(get("fortran.f8"), t(&[2, 3], &[1.5, 2.5, 3.5, 4.5, 5.5, 6.5], false), "protocol {protocol}");
            assert_eq!(get("counter.i8"), t(&[3], &[7., -8., 9.], true), "protocol {protocol}");
            assert_eq!(get("half.f2"), t(&[2], &[0.5, -2.], false), "protocol {protocol}");
            assert_eq!(get("mask.u1"), t(&[1, 2], &[0., 255.], true), "protocol {protocol}");
            assert_eq!(get("zero_dim"), t(&[], &[3.25], false), "protocol {protocol}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(numpy_state_dict(b"definitely not a pickle").is_err());
        assert!(numpy_state_dict(b"").is_err());
    }
}
