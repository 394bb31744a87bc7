//! A small, safe reader for the pickles CIFAR ships: dicts of byte strings, int lists and numpy
//! uint8 arrays, as Python 2's cPickle wrote them (protocols 0-2), plus the opcodes Python 3 adds
//! (up to protocol 5) so that a user's re-pickled batch loads too.
//!
//! It is a stack machine that builds plain values and never calls anything: `GLOBAL` + `REDUCE`
//! make an inert object that `ndarray_u8` later recognises. Byte strings borrow from the file
//! buffer, so the 30 MB image block of a batch is not copied until it goes into the data set.
//! No general-purpose crate reads numpy's `_reconstruct` objects without running Python.
//!
//! Values live in one arena and refer to each other by index, as Python objects refer to each other:
//! a memo GET or a DUP pushes the same value again instead of a copy (copying made a 198-byte pickle
//! of nested GETs cost gigabytes), a list appended to after it was memoised is the same list
//! everywhere, and a value that contains itself is no problem. Nothing walks the values recursively,
//! so there is no nesting limit, and dropping them is one flat free. What one parse may build is
//! bounded by what a CIFAR batch can need: `MAX_ITEMS` values and references, and owned bytes
//! (decoded text) of at most twice the pickle's size.
use std::borrow::Cow;
use std::collections::HashMap;

/// The most values and references (stack pushes and marks) one pickle may make. CIFAR-100's train
/// batch, the largest official pickle, makes about 100,000 (50,000 file names and label lists); a
/// re-pickled batch of all 60,000 images as lists is well inside. A pickle of 150 MB of one-byte
/// opcodes would otherwise build 150 million values (gigabytes).
pub const MAX_ITEMS: usize = 1 << 22;

/// Owned bytes (decoded text, Python 3's latin-1 byte strings) are at most this many times the
/// pickle's size, plus `OWNED_SLACK`: every legitimate decoding yields at most two bytes per input
/// byte, once, while memo GETs of a REDUCE could otherwise decode the same text again and again.
const OWNED_PER_BYTE: usize = 2;
const OWNED_SLACK: usize = 64 << 10;

/// A value's index in the arena.
type Id = u32;

enum Node<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// A float: its value is never needed (no CIFAR field is one), only that it is not an int.
    Float,
    /// Python 2 `str`, Python 3 `bytes` / `bytearray`.
    Bytes(Cow<'a, [u8]>),
    /// Python `unicode` / Python 3 `str`.
    Str(Cow<'a, str>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    /// Pairs in assignment order; a later pair with an equal key wins (see `Value::get`).
    Dict(Vec<(Id, Id)>),
    /// `module.name`, both text values.
    Global(Id, Id),
    /// `callable(*args)` followed by an optional `__setstate__(state)`, kept unevaluated.
    Object(Box<Object>),
}

struct Object {
    callable: Id,
    args: Id,
    state: Option<Id>,
}

/// A parsed pickle: its values, and the one `STOP` returned.
pub struct Pickle<'a> {
    nodes: Vec<Node<'a>>,
    root: Id,
}

impl<'a> Pickle<'a> {
    /// The value the pickle returns.
    pub fn root(&self) -> Value<'_, 'a> {
        self.value(self.root)
    }

    fn value(&self, id: Id) -> Value<'_, 'a> {
        Value { pickle: self, id }
    }
}

/// One value of a parsed pickle.
#[derive(Clone, Copy)]
pub struct Value<'p, 'a> {
    pickle: &'p Pickle<'a>,
    id: Id,
}

/// The items of a list or tuple.
#[derive(Clone, Copy)]
pub struct Items<'p, 'a> {
    pickle: &'p Pickle<'a>,
    ids: &'p [Id],
}

impl<'p, 'a> Items<'p, 'a> {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<Value<'p, 'a>> {
        self.ids.get(i).map(|&id| self.pickle.value(id))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Value<'p, 'a>> + 'p {
        let pickle = self.pickle;
        self.ids.iter().map(move |&id| pickle.value(id))
    }
}

impl<'p, 'a> Value<'p, 'a> {
    fn node(&self) -> &'p Node<'a> {
        &self.pickle.nodes[self.id as usize]
    }

    /// Text of a `str`/`bytes`/`unicode` value (CIFAR keys are ASCII either way).
    pub fn as_text(&self) -> Option<Cow<'p, str>> {
        match self.node() {
            Node::Bytes(b) => Some(String::from_utf8_lossy(b)),
            Node::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self.node() {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<Items<'p, 'a>> {
        match self.node() {
            Node::List(v) | Node::Tuple(v) => Some(Items {
                pickle: self.pickle,
                ids: v,
            }),
            _ => None,
        }
    }

    /// Looks a key up in a dict whose keys are text; the last assignment to a key wins, as in Python.
    pub fn get(&self, key: &str) -> Option<Value<'p, 'a>> {
        match self.node() {
            Node::Dict(kv) => kv
                .iter()
                .rev()
                .find(|(k, _)| self.pickle.value(*k).as_text().as_deref() == Some(key))
                .map(|(_, v)| self.pickle.value(*v)),
            _ => None,
        }
    }

    fn is_true(&self) -> bool {
        matches!(self.node(), Node::Bool(true) | Node::Int(1))
    }

    /// Reads a numpy uint8 array: `(shape, raw bytes)`. Accepts the `_reconstruct` + `BUILD` form
    /// that every numpy writes for protocols 0-4 and the `_frombuffer` form of protocol 5.
    pub fn ndarray_u8(&self) -> Result<(Vec<usize>, Cow<'a, [u8]>), String> {
        let p = self.pickle;
        let Node::Object(obj) = self.node() else {
            return Err("expected a numpy array".into());
        };
        let Node::Global(module, name) = p.value(obj.callable).node() else {
            return Err("expected a numpy array".into());
        };
        let (module, name) = (p.value(*module).as_text(), p.value(*name).as_text());
        let (Some(module), Some(name)) = (module, name) else {
            return Err("expected a numpy array".into());
        };
        if !module.starts_with("numpy") {
            return Err(format!("expected a numpy array, found {module}.{name}"));
        }
        let (shape, dtype, data) = match name.as_ref() {
            "_reconstruct" => {
                let st = obj
                    .state
                    .and_then(|s| p.value(s).items())
                    .ok_or("numpy array without state")?;
                // (version, shape, dtype, is_fortran, data); version 0 omits itself.
                let skip = if st.len() == 5 { 1 } else { 0 };
                if st.len() - skip != 4 {
                    return Err("numpy array state has an unexpected length".into());
                }
                let at = |i: usize| st.get(i + skip).expect("length checked above");
                if at(2).is_true() {
                    return Err("Fortran-ordered arrays are not supported".into());
                }
                (at(0), at(1), at(3))
            }
            "_frombuffer" => {
                let a = p.value(obj.args).items().ok_or("numpy array without arguments")?;
                if a.len() != 4 {
                    return Err("numpy _frombuffer call has an unexpected length".into());
                }
                let at = |i: usize| a.get(i).expect("length checked above");
                if at(3).as_text().as_deref() != Some("C") {
                    return Err("only C-ordered arrays are supported".into());
                }
                (at(2), at(1), at(0))
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
        let dtype_name = match dtype.node() {
            Node::Object(o) => p
                .value(o.args)
                .items()
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_text().map(|s| s.into_owned())),
            _ => None,
        }
        .ok_or("numpy dtype is unreadable")?;
        if dtype_name != "u1" && dtype_name != "b1" && dtype_name != "uint8" {
            return Err(format!("numpy array has dtype {dtype_name}, expected uint8"));
        }
        let Node::Bytes(data) = data.node() else {
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
    nodes: Vec<Node<'a>>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    /// Memo key to value. A hash map: a key costs an entry only when it is stored, whatever its
    /// number (picklers count 0, 1, 2, ..., but a 5-byte LONG_BINPUT can name key 4 billion).
    memo: HashMap<u32, Id>,
    /// Stack pushes and marks so far, bounded by `MAX_ITEMS`.
    items: usize,
    /// Bytes decoded into owned buffers so far, bounded by `owned_limit`.
    owned: usize,
    owned_limit: usize,
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

    /// Counts one stack push or mark against `MAX_ITEMS`.
    fn spend(&mut self) -> Result<(), String> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(format!(
                "more than {MAX_ITEMS} values and references: far more than any CIFAR batch holds"
            ));
        }
        Ok(())
    }
    /// Counts `n` decoded bytes against the owned-bytes budget.
    fn own(&mut self, n: usize) -> Result<(), String> {
        self.owned = self.owned.saturating_add(n);
        if self.owned > self.owned_limit {
            return Err(format!(
                "decodes to more than {} bytes of text, more than the pickle's own {} bytes can hold",
                self.owned_limit,
                self.data.len()
            ));
        }
        Ok(())
    }
    /// Pushes a value that is already in the arena (a GET, a DUP).
    fn push_id(&mut self, id: Id) -> Result<(), String> {
        self.spend()?;
        self.stack.push(id);
        Ok(())
    }
    /// Adds a new value to the arena and pushes it.
    fn push(&mut self, node: Node<'a>) -> Result<(), String> {
        let id = self.add(node);
        self.push_id(id)
    }
    /// Adds a value to the arena (its push is what counts against `MAX_ITEMS`, so the arena holds at
    /// most three values per push: GLOBAL's two texts and itself).
    fn add(&mut self, node: Node<'a>) -> Id {
        self.nodes.push(node);
        (self.nodes.len() - 1) as Id
    }
    fn node(&self, id: Id) -> &Node<'a> {
        &self.nodes[id as usize]
    }
    fn node_mut(&mut self, id: Id) -> &mut Node<'a> {
        &mut self.nodes[id as usize]
    }
    fn text(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            Node::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    fn pop(&mut self) -> Result<Id, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow past a mark".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }
    fn top(&self) -> Result<Id, String> {
        self.stack.last().copied().ok_or_else(|| "stack underflow".to_string())
    }
    fn pop_mark(&mut self) -> Result<Vec<Id>, String> {
        let m = self.marks.pop().ok_or("no mark on the stack")?;
        if m > self.stack.len() {
            return Err("corrupt mark".into());
        }
        Ok(self.stack.split_off(m))
    }
    fn push_bytes(&mut self, n: u64) -> Result<(), String> {
        let n = usize::try_from(n).map_err(|_| "byte string too long")?;
        let b = self.take(n)?;
        self.push(Node::Bytes(Cow::Borrowed(b)))
    }
    fn push_unicode(&mut self, n: u64) -> Result<(), String> {
        let n = usize::try_from(n).map_err(|_| "string too long")?;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "string is not UTF-8")?;
        self.push(Node::Str(Cow::Borrowed(s)))
    }
    fn put(&mut self, key: u32) -> Result<(), String> {
        let id = *self.stack.last().ok_or("memo put on an empty stack")?;
        self.memo.insert(key, id);
        Ok(())
    }
    fn get(&mut self, key: u32) -> Result<(), String> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo key {key} was never stored"))?;
        self.push_id(id)
    }
    fn extend_list(&mut self, items: Vec<Id>) -> Result<(), String> {
        let top = self.top()?;
        match self.node_mut(top) {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err("APPEND to something that is not a list".into()),
        }
    }
    fn set_items(&mut self, items: Vec<Id>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let top = self.top()?;
        match self.node_mut(top) {
            // Appended, not searched: a dict of a million keys must not cost a million squared
            // comparisons; lookups take the last pair with the key (`Value::get`).
            Node::Dict(kv) => {
                kv.extend(items.chunks_exact(2).map(|p| (p[0], p[1])));
                Ok(())
            }
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }
    fn object(&mut self, callable: Id, args: Id) -> Result<(), String> {
        if let Some(b) = self.py3_bytes(callable, args) {
            let b = b?;
            return self.push(Node::Bytes(Cow::Owned(b)));
        }
        self.push(Node::Object(Box::new(Object {
            callable,
            args,
            state: None,
        })))
    }

    /// Python 3 writes `bytes` at protocols 0-2 as `_codecs.encode(text, 'latin1')` (and `b''` as
    /// `bytes()`), since those protocols have no bytes opcode: the byte string is rebuilt here, as
    /// unpickling would. None: some other call.
    fn py3_bytes(&mut self, callable: Id, args: Id) -> Option<Result<Vec<u8>, String>> {
        let Some(text) = self.bytes_call(callable, args)? else {
            return Some(Ok(Vec::new()));
        };
        let n = self.str_of(text).map_or(0, str::len);
        Some(self.own(n).and_then(|()| latin1(self.str_of(text).unwrap_or_default())))
    }

    /// Whether `callable(*args)` makes Python 3 bytes: `Some(Some(text))` for
    /// `_codecs.encode(text, 'latin1')`, `Some(None)` for `bytes()`, None for any other call.
    fn bytes_call(&self, callable: Id, args: Id) -> Option<Option<Id>> {
        let Node::Global(module, name) = *self.node(callable) else {
            return None;
        };
        let Node::Tuple(args) = self.node(args) else {
            return None;
        };
        match (self.text(module)?, self.text(name)?, args.as_slice()) {
            ("_codecs", "encode", &[text, enc])
                if self.str_of(text).is_some()
                    && matches!(self.str_of(enc), Some("latin1" | "latin-1" | "iso-8859-1")) =>
            {
                Some(Some(text))
            }
            ("__builtin__" | "builtins", "bytes" | "bytearray", []) => Some(None),
            _ => None,
        }
    }

    fn str_of(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Runs opcodes until STOP. Each group of opcodes has its own helper; an opcode no group takes
    /// (persistent ids, extension registry, sets, out-of-band buffers) is refused by name and offset.
    fn run(mut self) -> Result<Pickle<'a>, String> {
        use op::*;
        loop {
            let at = self.pos;
            let code = self.u8()?;
            let known = match code {
                STOP => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        nodes: self.nodes,
                        root,
                    });
                }
                PROTO | FRAME => self.header(code)?,
                MARK | POP | POP_MARK | DUP => self.stack_op(code)?,
                NONE | NEWTRUE | NEWFALSE | INT | LONG | BININT | BININT1 | BININT2 | LONG1 | LONG4 | FLOAT
                | BINFLOAT => self.number(code)?,
                STRING | BINSTRING | SHORT_BINSTRING | BINBYTES | SHORT_BINBYTES | BINBYTES8 | BYTEARRAY8 | UNICODE
                | BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => self.string(code)?,
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
            op::MARK => {
                self.spend()?;
                self.marks.push(self.stack.len());
            }
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let id = *self.stack.last().ok_or("DUP on an empty stack")?;
                self.push_id(id)?; // the same object again, as in Python
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// None, booleans, ints (binary, little-endian two's complement, or protocol 0's decimal text,
    /// where "01" / "00" mean True / False) and floats (big-endian binary or text).
    fn number(&mut self, code: u8) -> Result<bool, String> {
        let v = match code {
            op::NONE => Node::None,
            op::NEWTRUE => Node::Bool(true),
            op::NEWFALSE => Node::Bool(false),
            op::BININT => Node::Int(self.u32()? as i32 as i64),
            op::BININT1 => Node::Int(self.u8()? as i64),
            op::BININT2 => Node::Int(self.u16()? as i64),
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
                Node::Int(i64::from_le_bytes(buf))
            }
            op::INT | op::LONG => {
                let s = self.line_str()?;
                let s = s.trim_end_matches('L');
                match s {
                    "01" => Node::Bool(true),
                    "00" => Node::Bool(false),
                    _ => Node::Int(s.parse().map_err(|_| format!("bad integer literal {s:?}"))?),
                }
            }
            op::BINFLOAT => {
                self.take(8)?;
                Node::Float
            }
            op::FLOAT => {
                let s = self.line_str()?;
                s.parse::<f64>().map_err(|_| format!("bad float literal {s:?}"))?;
                Node::Float
            }
            _ => return Ok(false),
        };
        self.push(v)?;
        Ok(true)
    }

    /// Byte strings (Python 2 `str`, Python 3 `bytes` / `bytearray`) and unicode text; the binary
    /// forms borrow from the file buffer, the text forms are decoded (and count as owned bytes).
    fn string(&mut self, code: u8) -> Result<bool, String> {
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
                self.own(line.len())?;
                let b = unquote_py2(line).ok_or("bad STRING literal")?;
                self.push(Node::Bytes(Cow::Owned(b)))?;
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
                let line = self.line()?;
                self.own(2 * line.len())?; // a Latin-1 byte is at most 2 bytes of UTF-8
                let s = raw_unicode_escape(line).ok_or("bad raw-unicode-escape text in UNICODE")?;
                self.push(Node::Str(Cow::Owned(s)))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, lists and dicts: made empty, from the items above a mark, or (TUPLE1-3) from the
    /// top one to three items; then appended to or assigned into (the same object wherever it
    /// was pushed or memoised).
    fn container(&mut self, code: u8) -> Result<bool, String> {
        match code {
            op::EMPTY_TUPLE => self.push(Node::Tuple(Vec::new()))?,
            op::EMPTY_LIST => self.push(Node::List(Vec::new()))?,
            op::EMPTY_DICT => self.push(Node::Dict(Vec::new()))?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (code - op::TUPLE1 + 1) as usize;
                if self.stack.len() < n || self.marks.last().is_some_and(|&m| m > self.stack.len() - n) {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(Node::Tuple(items))?;
            }
            op::LIST => {
                let items = self.pop_mark()?;
                self.push(Node::List(items))?;
            }
            op::DICT => {
                let items = self.pop_mark()?;
                self.push(Node::Dict(Vec::new()))?;
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
                let module = self.line_str()?;
                let name = self.line_str()?;
                let (module, name) = (
                    self.add(Node::Str(Cow::Borrowed(module))),
                    self.add(Node::Str(Cow::Borrowed(name))),
                );
                self.push(Node::Global(module, name))?;
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                if self.text(module).is_none() || self.text(name).is_none() {
                    return Err("STACK_GLOBAL needs two strings".into());
                }
                self.push(Node::Global(module, name))?;
            }
            op::REDUCE | op::NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                if !matches!(self.node(args), Node::Tuple(..)) {
                    return Err("REDUCE arguments are not a tuple".into());
                }
                self.object(callable, args)?;
            }
            op::BUILD => {
                let st = self.pop()?;
                let top = self.top()?;
                match self.node_mut(top) {
                    Node::Object(obj) => obj.state = Some(st),
                    _ => return Err("BUILD on something that is not an object".into()),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo: PUT stores the top of the stack under a key (text, 1 or 4 bytes, or MEMOIZE's
    /// next number), GET pushes that same value again.
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
                let idx = u32::try_from(self.memo.len()).map_err(|_| "memo overflows")?;
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

/// Python 3's `bytes` from the text of `_codecs.encode(text, 'latin1')`.
fn latin1(text: &str) -> Result<Vec<u8>, String> {
    text.chars()
        .map(|c| u8::try_from(c as u32).map_err(|_| "a latin1 byte string holds a character above 255".to_string()))
        .collect()
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
pub fn parse(data: &[u8]) -> Result<Pickle<'_>, String> {
    Machine {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        items: 0,
        owned: 0,
        owned_limit: data.len().saturating_mul(OWNED_PER_BYTE).saturating_add(OWNED_SLACK),
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: Value<'_, '_>) -> Vec<i64> {
        v.items().unwrap().iter().map(|x| x.as_int().unwrap()).collect()
    }

    #[test]
    fn python2_dict_with_ndarray() {
        // What build_cifar10.py's Py2Pickler writes for {'labels': [3, 300], 'data': uint8 (2, 2)}.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"U\x06labels]q\x01(K\x03M\x2c\x01e");
        p.extend(b"U\x04data");
        p.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01K\x02K\x02\x86");
        p.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.extend(b"\x89U\x04\x01\x02\x03\x04tbu.");
        let pk = parse(&p).unwrap();
        let v = pk.root();
        assert_eq!(ints(v.get("labels").unwrap()), vec![3, 300]);
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
        assert!(parse(b"\xff").err().unwrap().contains("opcode"));
        assert!(parse(b"a.").is_err());
        assert!(parse(b"h\x05.").err().unwrap().contains("memo"));
    }

    #[test]
    fn deep_nesting_is_built_and_dropped_without_recursion() {
        // Nothing walks values recursively, so a 100,000-deep list neither overflows the stack while
        // it is built nor when it is dropped.
        let mut p = vec![b']'; 100_000];
        p.extend([b'a'; 99_999]);
        p.push(b'.');
        let pk = parse(&p).unwrap();
        assert_eq!(pk.root().items().unwrap().len(), 1);
    }

    #[test]
    fn protocol0_text_opcodes() {
        let pk = parse(b"(dp0\nS'key'\np1\nI42\nsS'b'\nI01\ns.").unwrap();
        assert_eq!(pk.root().get("key").and_then(|v| v.as_int()), Some(42));
        assert_eq!(pk.root().get("b").and_then(|v| v.as_int()), Some(1));
    }

    /// Nested memo GETs of a list: each level is a list holding the previous one twice, so the
    /// logical tree has 2^levels leaves in a pickle of a few bytes per level.
    fn memo_bomb(levels: u32) -> Vec<u8> {
        let mut p = vec![0x80, 2, b']', b'r'];
        p.extend(0u32.to_le_bytes());
        for k in 0..levels {
            p.push(b'(');
            for _ in 0..2 {
                p.push(b'j');
                p.extend(k.to_le_bytes());
            }
            p.extend([b'2', b'0']); // DUP then POP: a copy in the old reader
            p.push(b'l');
            p.push(b'r');
            p.extend((k + 1).to_le_bytes());
        }
        p.push(b'.');
        p
    }

    #[test]
    fn memo_gets_share_the_value_instead_of_copying_it() {
        // 64 levels: 2^64 leaves if each GET copied (the old reader took 2.3 GB at 22 levels).
        let p = memo_bomb(64);
        let pk = parse(&p).unwrap();
        assert!(pk.nodes.len() < 200, "{} values for {} bytes", pk.nodes.len(), p.len());
        let top = pk.root().items().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(
            top.get(0).unwrap().id,
            top.get(1).unwrap().id,
            "one list, referenced twice"
        );
    }

    #[test]
    fn a_list_filled_after_it_was_memoised_is_the_same_list() {
        // [L, L] where L = [] is memoised before its items are appended, as picklers write it.
        let pk = parse(b"](]q\x00(K\x01K\x02eh\x00e.").unwrap();
        let outer = pk.root().items().unwrap();
        assert_eq!(outer.len(), 2);
        assert_eq!(ints(outer.get(1).unwrap()), vec![1, 2]);
        // A list that contains itself is fine too: nothing recurses.
        let pk = parse(b"]q\x00h\x00a.").unwrap();
        assert_eq!(pk.root().items().unwrap().get(0).unwrap().id, pk.root().id);
    }

    #[test]
    fn later_assignment_to_a_key_wins() {
        let pk = parse(b"}(U\x01aK\x01U\x01aK\x02u.").unwrap();
        assert_eq!(pk.root().get("a").and_then(|v| v.as_int()), Some(2));
    }

    #[test]
    fn what_one_pickle_may_build_is_bounded() {
        // MAX_ITEMS pushes, the next one is refused: DUP a value again and again.
        let mut p = vec![b'N'];
        p.extend(std::iter::repeat_n(b'2', MAX_ITEMS));
        p.push(b'.');
        let e = parse(&p).err().unwrap();
        assert!(e.contains("values and references"), "{e}");
        // Memo GETs of one REDUCE decoding the same text again and again: refused once the decoded
        // bytes pass twice the pickle's size.
        let text = "x".repeat(60_000);
        let mut p = b"c_codecs\nencode\nq\x00X".to_vec();
        p.extend((text.len() as u32).to_le_bytes());
        p.extend(text.as_bytes());
        p.extend(b"X\x06\x00\x00\x00latin1\x86q\x01");
        for _ in 0..100 {
            p.extend(b"h\x00h\x01R0");
        }
        p.push(b'N');
        p.push(b'.');
        let e = parse(&p).err().unwrap();
        assert!(e.contains("more than the pickle's own"), "{e}");
        // A memo key of 4 billion is one map entry (the fuzz tests bound what a parse allocates).
        let pk = parse(b"Nr\xff\xff\xff\xffj\xff\xff\xff\xff.").unwrap();
        assert!(matches!(pk.root().node(), Node::None));
    }
}
