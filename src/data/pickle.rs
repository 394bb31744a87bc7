//! A small, safe reader for the pickles CIFAR ships: dicts of byte strings, int lists and numpy
//! uint8 arrays, as Python 2's cPickle wrote them (protocols 0-2), plus the opcodes Python 3 adds
//! (up to protocol 5) so that a user's re-pickled batch loads too.
//!
//! It is a stack machine that builds plain values and never calls anything: `GLOBAL` + `REDUCE`
//! make an inert `Value::Object` that `ndarray_u8` later recognises. Byte strings borrow from the
//! file buffer, so the 30 MB image block of a batch is not copied until it goes into the data set.
//! No general-purpose crate reads numpy's `_reconstruct` objects without running Python.
use std::borrow::Cow;

/// Nesting deeper than this is no CIFAR file; refusing it keeps `Drop` from overflowing the stack.
const MAX_DEPTH: u16 = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 2 `str`, Python 3 `bytes` / `bytearray`.
    Bytes(Cow<'a, [u8]>),
    /// Python `unicode` / Python 3 `str`.
    Str(Cow<'a, str>),
    List(Vec<Value<'a>>, u16),
    Tuple(Vec<Value<'a>>, u16),
    Dict(Vec<(Value<'a>, Value<'a>)>, u16),
    Global(String, String),
    /// `callable(*args)` followed by an optional `__setstate__(state)`, kept unevaluated.
    Object {
        callable: Box<Value<'a>>,
        args: Box<Value<'a>>,
        state: Option<Box<Value<'a>>>,
        depth: u16,
    },
}

impl<'a> Value<'a> {
    fn depth(&self) -> u16 {
        match self {
            Value::List(_, d) | Value::Tuple(_, d) | Value::Dict(_, d) => *d,
            Value::Object { depth, .. } => *depth,
            _ => 0,
        }
    }

    /// Text of a `str`/`bytes`/`unicode` value (CIFAR keys are ASCII either way).
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b)),
            Value::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(v, _) | Value::Tuple(v, _) => Some(v),
            _ => None,
        }
    }

    /// Looks a key up in a dict whose keys are text.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Dict(kv, _) => kv
                .iter()
                .find(|(k, _)| k.as_text().as_deref() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Reads a numpy uint8 array: `(shape, raw bytes)`. Accepts the `_reconstruct` + `BUILD` form
    /// that every numpy writes for protocols 0-4 and the `_frombuffer` form of protocol 5.
    pub fn ndarray_u8(&self) -> Result<(Vec<usize>, Cow<'a, [u8]>), String> {
        let Value::Object {
            callable, args, state, ..
        } = self
        else {
            return Err("expected a numpy array".into());
        };
        let Value::Global(module, name) = callable.as_ref() else {
            return Err("expected a numpy array".into());
        };
        if !module.starts_with("numpy") {
            return Err(format!("expected a numpy array, found {module}.{name}"));
        }
        let (shape, dtype, data) = match name.as_str() {
            "_reconstruct" => {
                let st = state
                    .as_deref()
                    .and_then(Value::items)
                    .ok_or("numpy array without state")?;
                // (version, shape, dtype, is_fortran, data); version 0 omits itself.
                let st = if st.len() == 5 { &st[1..] } else { st };
                if st.len() != 4 {
                    return Err("numpy array state has an unexpected length".into());
                }
                if st[2] == Value::Bool(true) || st[2] == Value::Int(1) {
                    return Err("Fortran-ordered arrays are not supported".into());
                }
                (&st[0], &st[1], &st[3])
            }
            "_frombuffer" => {
                let a = args.items().ok_or("numpy array without arguments")?;
                if a.len() != 4 {
                    return Err("numpy _frombuffer call has an unexpected length".into());
                }
                if a[3].as_text().as_deref() != Some("C") {
                    return Err("only C-ordered arrays are supported".into());
                }
                (&a[2], &a[1], &a[0])
            }
            other => return Err(format!("expected a numpy array, found numpy {other}")),
        };
        let shape = shape
            .items()
            .ok_or("numpy shape is not a tuple")?
            .iter()
            .map(|d| {
                d.as_int()
                    .filter(|&d| d >= 0)
                    .map(|d| d as usize)
                    .ok_or("numpy shape holds a non-integer")
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dtype_name = match dtype {
            Value::Object { args, .. } => args
                .items()
                .and_then(|a| a.first())
                .and_then(Value::as_text)
                .map(|s| s.into_owned()),
            _ => None,
        }
        .ok_or("numpy dtype is unreadable")?;
        if dtype_name != "u1" && dtype_name != "b1" && dtype_name != "uint8" {
            return Err(format!("numpy array has dtype {dtype_name}, expected uint8"));
        }
        let Value::Bytes(data) = data else {
            return Err("numpy array data is not a byte string".into());
        };
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("numpy shape overflows")?;
        if data.len() != expected {
            return Err(format!(
                "numpy array of shape {shape:?} holds {} bytes, expected {expected}",
                data.len()
            ));
        }
        Ok((shape, data.clone()))
    }
}

fn container_depth<'a>(items: impl IntoIterator<Item = &'a Value<'a>>) -> Result<u16, String>
where
    Value<'a>: 'a,
{
    let d = items.into_iter().map(Value::depth).max().unwrap_or(0) + 1;
    if d > MAX_DEPTH {
        return Err(format!("nesting deeper than {MAX_DEPTH}"));
    }
    Ok(d)
}

/// The opcodes this reader knows, named as in CPython's `pickletools` (protocol in brackets where
/// it is not 0).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    /// [2]
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    /// [3]
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    /// [4]
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    /// [5]
    pub const BYTEARRAY8: u8 = 0x96;
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value<'a>>,
    marks: Vec<usize>,
    /// Indexed by memo key: picklers number their entries 0, 1, 2, ..., so a vector beats a hash
    /// map (a CIFAR batch memoizes 10,000 file names).
    memo: Vec<Option<Value<'a>>>,
    /// Entries stored, for MEMOIZE (which uses len(memo) as its key).
    memo_count: u32,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: needs {n} more bytes at offset {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("take(2) gives 2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("take(4) gives 4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("take(8) gives 8 bytes"),
        ))
    }
    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: unterminated text argument")?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }
    fn line_str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.line()?).map_err(|_| "text argument is not UTF-8".to_string())
    }
    fn pop(&mut self) -> Result<Value<'a>, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow past a mark".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }
    fn top(&mut self) -> Result<&mut Value<'a>, String> {
        self.stack.last_mut().ok_or_else(|| "stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value<'a>>, String> {
        let m = self.marks.pop().ok_or("no mark on the stack")?;
        if m > self.stack.len() {
            return Err("corrupt mark".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn push_bytes(&mut self, n: u64) -> Result<(), String> {
        let n = usize::try_from(n).map_err(|_| "byte string too long")?;
        let b = self.take(n)?;
        self.stack.push(Value::Bytes(Cow::Borrowed(b)));
        Ok(())
    }
    fn push_unicode(&mut self, n: u64) -> Result<(), String> {
        let n = usize::try_from(n).map_err(|_| "string too long")?;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "string is not UTF-8")?;
        self.stack.push(Value::Str(Cow::Borrowed(s)));
        Ok(())
    }
    fn put(&mut self, idx: u32) -> Result<(), String> {
        let v = self.stack.last().ok_or("memo put on an empty stack")?.clone();
        let i = idx as usize;
        if i >= self.memo.len() {
            // Each PUT takes at least 2 bytes, so a key beyond the pickle's length is not a real one.
            if i > self.data.len() {
                return Err(format!("memo key {idx} is larger than the pickle"));
            }
            self.memo.resize(i + 1, None);
        }
        if self.memo[i].replace(v).is_none() {
            self.memo_count += 1;
        }
        Ok(())
    }
    fn get(&mut self, idx: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(idx as usize)
            .and_then(|v| v.clone())
            .ok_or_else(|| format!("memo key {idx} was never stored"))?;
        self.stack.push(v);
        Ok(())
    }
    fn tuple(&mut self, items: Vec<Value<'a>>) -> Result<(), String> {
        let d = container_depth(&items)?;
        self.stack.push(Value::Tuple(items, d));
        Ok(())
    }
    fn extend_list(&mut self, items: Vec<Value<'a>>) -> Result<(), String> {
        let d = container_depth(&items)?;
        match self.top()? {
            Value::List(v, depth) => {
                *depth = (*depth).max(d);
                v.extend(items);
                Ok(())
            }
            _ => Err("APPEND to something that is not a list".into()),
        }
    }
    fn set_items(&mut self, items: Vec<Value<'a>>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let d = container_depth(&items)?;
        match self.top()? {
            Value::Dict(kv, depth) => {
                *depth = (*depth).max(d);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    // A later assignment to the same key wins, as in Python.
                    if let Some(slot) = kv.iter_mut().find(|(key, _)| *key == k) {
                        slot.1 = v;
                    } else {
                        kv.push((k, v));
                    }
                }
                Ok(())
            }
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }
    fn object(&mut self, callable: Value<'a>, args: Value<'a>) -> Result<(), String> {
        if let Some(b) = py3_bytes(&callable, &args) {
            self.stack.push(Value::Bytes(Cow::Owned(b?)));
            return Ok(());
        }
        let depth = container_depth([&callable, &args])?;
        self.stack.push(Value::Object {
            callable: Box::new(callable),
            args: Box::new(args),
            state: None,
            depth,
        });
        Ok(())
    }

    /// Runs opcodes until STOP. Each group of opcodes has its own helper; an opcode no group takes
    /// (persistent ids, extension registry, sets, out-of-band buffers) is refused by name and offset.
    fn run(mut self) -> Result<Value<'a>, String> {
        use op::*;
        loop {
            let at = self.pos;
            let code = self.u8()?;
            let known = match code {
                STOP => return self.pop(),
                PROTO | FRAME => self.header(code)?,
                MARK | POP | POP_MARK | DUP => self.stack_op(code)?,
                NONE | NEWTRUE | NEWFALSE | INT | LONG | BININT | BININT1 | BININT2 | LONG1 | LONG4 | FLOAT
                | BINFLOAT => self.number(code)?,
                STRING | BINSTRING | SHORT_BINSTRING | BINBYTES | SHORT_BINBYTES | BINBYTES8 | BYTEARRAY8 | UNICODE
                | BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => self.text(code)?,
                EMPTY_TUPLE | EMPTY_LIST | EMPTY_DICT | TUPLE | TUPLE1 | TUPLE2 | TUPLE3 | LIST | DICT | APPEND
                | APPENDS | SETITEM | SETITEMS => self.container(code)?,
                GLOBAL | STACK_GLOBAL | REDUCE | NEWOBJ | BUILD => self.call(code)?,
                PUT | BINPUT | LONG_BINPUT | MEMOIZE | GET | BINGET | LONG_BINGET => self.memo_op(code)?,
                _ => false,
            };
            if !known {
                return Err(format!("unsupported pickle opcode 0x{code:02x} at offset {at}"));
            }
        }
    }

    /// PROTO and FRAME: checked, then nothing to build. Each helper returns whether it took `code`.
    fn header(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::PROTO => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(format!("unsupported pickle protocol {proto}"));
                }
            }
            op::FRAME => {
                self.u64()?; // a size hint only
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn stack_op(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let v = self.stack.last().ok_or("DUP on an empty stack")?.clone();
                self.stack.push(v);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// None, booleans, ints (binary, little-endian two's complement, or protocol 0's decimal text,
    /// where "01" / "00" mean True / False) and floats (big-endian binary or text).
    fn number(&mut self, code: u8) -> Result<bool, String> {
        let v = match code {
            op::NONE => Value::None,
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            op::BININT => Value::Int(self.u32()? as i32 as i64),
            op::BININT1 => Value::Int(self.u8()? as i64),
            op::BININT2 => Value::Int(self.u16()? as i64),
            op::LONG1 | op::LONG4 => {
                let n = if code == op::LONG1 {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                let b = self.take(n)?;
                if n > 8 {
                    return Err("integer wider than 64 bits".into());
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(b);
                Value::Int(i64::from_le_bytes(buf))
            }
            op::INT | op::LONG => {
                let s = self.line_str()?;
                let s = s.trim_end_matches('L');
                match s {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    _ => Value::Int(s.parse().map_err(|_| format!("bad integer literal {s:?}"))?),
                }
            }
            op::BINFLOAT => Value::Float(f64::from_be_bytes(
                self.take(8)?.try_into().expect("take(8) gives 8 bytes"),
            )),
            op::FLOAT => {
                let s = self.line_str()?;
                Value::Float(s.parse().map_err(|_| format!("bad float literal {s:?}"))?)
            }
            _ => return Ok(false),
        };
        self.stack.push(v);
        Ok(true)
    }

    /// Byte strings (Python 2 `str`, Python 3 `bytes` / `bytearray`) and unicode text; the binary
    /// forms borrow from the file buffer.
    fn text(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::SHORT_BINSTRING | op::SHORT_BINBYTES => {
                let n = self.u8()? as u64;
                self.push_bytes(n)?;
            }
            op::BINSTRING | op::BINBYTES => {
                let n = self.u32()? as u64;
                self.push_bytes(n)?;
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = self.u64()?;
                self.push_bytes(n)?;
            }
            op::STRING => {
                let line = self.line()?;
                let b = unquote_py2(line).ok_or("bad STRING literal")?;
                self.stack.push(Value::Bytes(Cow::Owned(b)));
            }
            op::SHORT_BINUNICODE => {
                let n = self.u8()? as u64;
                self.push_unicode(n)?;
            }
            op::BINUNICODE => {
                let n = self.u32()? as u64;
                self.push_unicode(n)?;
            }
            op::BINUNICODE8 => {
                let n = self.u64()?;
                self.push_unicode(n)?;
            }
            op::UNICODE => {
                let s = raw_unicode_escape(self.line()?).ok_or("bad raw-unicode-escape text in UNICODE")?;
                self.stack.push(Value::Str(Cow::Owned(s)));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, lists and dicts: made empty, from the items above a mark, or (TUPLE1-3) from the
    /// top one to three items; then appended to or assigned into.
    fn container(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::EMPTY_TUPLE => self.stack.push(Value::Tuple(Vec::new(), 1)),
            op::EMPTY_LIST => self.stack.push(Value::List(Vec::new(), 1)),
            op::EMPTY_DICT => self.stack.push(Value::Dict(Vec::new(), 1)),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.tuple(items)?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                if self.stack.len() < n || self.marks.last().is_some_and(|&m| m > self.stack.len() - n) {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.tuple(items)?;
            }
            op::LIST => {
                let items = self.pop_mark()?;
                let d = container_depth(&items)?;
                self.stack.push(Value::List(items, d));
            }
            op::DICT => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Dict(Vec::new(), 1));
                self.set_items(items)?;
            }
            op::APPEND => {
                let v = self.pop()?;
                self.extend_list(vec![v])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, calls and BUILD: kept as inert values (nothing is imported or called).
    fn call(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::GLOBAL => {
                let module = self.line_str()?.to_string();
                let name = self.line_str()?.to_string();
                self.stack.push(Value::Global(module, name));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_text(), name.as_text()) {
                    (Some(m), Some(n)) => {
                        let g = Value::Global(m.into_owned(), n.into_owned());
                        self.stack.push(g);
                    }
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            op::REDUCE | op::NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                if !matches!(args, Value::Tuple(..)) {
                    return Err("REDUCE arguments are not a tuple".into());
                }
                self.object(callable, args)?;
            }
            op::BUILD => {
                let st = self.pop()?;
                let d = st.depth() + 1;
                match self.top()? {
                    Value::Object { state, depth, .. } => {
                        *depth = (*depth).max(d);
                        if *depth > MAX_DEPTH {
                            return Err(format!("nesting deeper than {MAX_DEPTH}"));
                        }
                        *state = Some(Box::new(st));
                    }
                    _ => return Err("BUILD on something that is not an object".into()),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo: PUT stores the top of the stack under a key (text, 1 or 4 bytes, or MEMOIZE's
    /// next number), GET pushes it back.
    fn memo_op(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::PUT => {
                let idx = self.line_str()?.parse().map_err(|_| "bad PUT index")?;
                self.put(idx)?;
            }
            op::BINPUT => {
                let idx = self.u8()? as u32;
                self.put(idx)?;
            }
            op::LONG_BINPUT => {
                let idx = self.u32()?;
                self.put(idx)?;
            }
            op::MEMOIZE => {
                let idx = self.memo_count;
                self.put(idx)?;
            }
            op::GET => {
                let idx = self.line_str()?.parse().map_err(|_| "bad GET index")?;
                self.get(idx)?;
            }
            op::BINGET => {
                let idx = self.u8()? as u32;
                self.get(idx)?;
            }
            op::LONG_BINGET => {
                let idx = self.u32()?;
                self.get(idx)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Python 3 writes `bytes` at protocols 0-2 as `_codecs.encode(text, 'latin1')` (and `b''` as
/// `bytes()`), since those protocols have no bytes opcode: the byte string is rebuilt here, as
/// unpickling would. None: some other call.
fn py3_bytes(callable: &Value<'_>, args: &Value<'_>) -> Option<Result<Vec<u8>, String>> {
    let Value::Global(module, name) = callable else {
        return None;
    };
    let args = args.items()?;
    match (module.as_str(), name.as_str(), args) {
        ("_codecs", "encode", [Value::Str(text), Value::Str(enc)])
            if matches!(enc.as_ref(), "latin1" | "latin-1" | "iso-8859-1") =>
        {
            Some(
                text.chars()
                    .map(|c| {
                        u8::try_from(c as u32)
                            .map_err(|_| "a latin1 byte string holds a character above 255".to_string())
                    })
                    .collect(),
            )
        }
        ("__builtin__" | "builtins", "bytes" | "bytearray", []) => Some(Ok(Vec::new())),
        _ => None,
    }
}

/// Decodes a protocol-0 `UNICODE` argument (raw-unicode-escape): bytes are Latin-1 characters,
/// except `\uXXXX` and `\UXXXXXXXX` escapes.
fn raw_unicode_escape(line: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        let width = match (b, line.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if width == 0 {
            out.push(b as char);
            i += 1;
            continue;
        }
        let hex = std::str::from_utf8(line.get(i + 2..i + 2 + width)?).ok()?;
        out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
        i += 2 + width;
    }
    Some(out)
}

/// Decodes a protocol-0 `STRING` argument: a quoted Python 2 literal.
fn unquote_py2(line: &[u8]) -> Option<Vec<u8>> {
    let q = *line.first()?;
    if (q != b'\'' && q != b'"') || line.len() < 2 || *line.last()? != q {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *body.get(i + 1)?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'x' => {
                let h = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Parses one pickle. Errors are plain sentences; the caller adds the file name.
pub fn parse(data: &[u8]) -> Result<Value<'_>, String> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
        memo_count: 0,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python2_dict_with_ndarray() {
        // What build_cifar10.py's Py2Pickler writes for {'labels': [3, 300], 'data': uint8 (2, 2)}.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"U\x06labels]q\x01(K\x03M\x2c\x01e");
        p.extend(b"U\x04data");
        p.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01K\x02K\x02\x86");
        p.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.extend(b"\x89U\x04\x01\x02\x03\x04tbu.");
        let v = parse(&p).unwrap();
        let labels: Vec<i64> = v
            .get("labels")
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .map(|x| x.as_int().unwrap())
            .collect();
        assert_eq!(labels, vec![3, 300]);
        let (shape, data) = v.get("data").unwrap().ndarray_u8().unwrap();
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(data.as_ref(), &[1, 2, 3, 4]);
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let p = b"\x80\x02}q\x00(U\x06labels]q\x01(K\x03K\x04eu.";
        assert!(parse(p).is_ok());
        for n in 0..p.len() - 1 {
            assert!(parse(&p[..n]).is_err(), "prefix of {n} bytes parsed");
        }
        assert!(parse(b"\xff").unwrap_err().contains("opcode"));
        assert!(parse(b"a.").is_err());
        assert!(parse(b"h\x05.").unwrap_err().contains("memo"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = vec![b']'; 1000];
        p.extend([b'a'; 999]);
        p.push(b'.');
        assert!(parse(&p).unwrap_err().contains("nesting"));
    }

    #[test]
    fn protocol0_text_opcodes() {
        let v = parse(b"(dp0\nS'key'\np1\nI42\nsS'b'\nI01\ns.").unwrap();
        assert_eq!(v.get("key"), Some(&Value::Int(42)));
        assert_eq!(v.get("b"), Some(&Value::Bool(true)));
    }
}
