//! A pickle writer of protocol 3 with the few opcodes the payloads need: GLOBAL (a class or a
//! function by module and name), MARK/TUPLE, the int opcodes, raw bytes, text, NEWTRUE/NEWFALSE,
//! NONE, REDUCE (a call) and STOP. No memo: every value is written once.
//!
//! Hand-written rather than a crate: the pickle crates (serde-pickle) encode data only and
//! cannot write a GLOBAL or a REDUCE, which every payload here is made of (docs/torch-ipc.md).

/// One pickle under construction.
#[derive(Debug, Default)]
pub struct Pickle {
    bytes: Vec<u8>,
}

impl Pickle {
    /// A stream that starts with the PROTO opcode for protocol 3.
    pub fn new() -> Pickle {
        Pickle { bytes: vec![0x80, 3] }
    }

    /// `module.name` by name (the class or function object itself when unpickled).
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.bytes.push(b'c');
        self.bytes.extend_from_slice(module.as_bytes());
        self.bytes.push(b'\n');
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'\n');
        self
    }

    /// Starts a tuple (or the arguments of a call): close it with [`Pickle::tuple`].
    pub fn mark(&mut self) -> &mut Self {
        self.bytes.push(b'(');
        self
    }

    /// Ends the tuple started by the last [`Pickle::mark`].
    pub fn tuple(&mut self) -> &mut Self {
        self.bytes.push(b't');
        self
    }

    /// Calls the callable below the arguments tuple on the stack.
    pub fn reduce(&mut self) -> &mut Self {
        self.bytes.push(b'R');
        self
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        match v {
            0..=0xff => self.bytes.extend_from_slice(&[b'K', v as u8]),
            0x100..=0xffff => {
                self.bytes.push(b'M');
                self.bytes.extend_from_slice(&(v as u16).to_le_bytes());
            }
            _ if i32::try_from(v).is_ok() => {
                self.bytes.push(b'J');
                self.bytes.extend_from_slice(&(v as i32).to_le_bytes());
            }
            _ => {
                // LONG1: the shortest little-endian two's complement that keeps the sign.
                let all = v.to_le_bytes();
                let mut n = 8;
                while n > 1 {
                    let (last, prev) = (all[n - 1], all[n - 2]);
                    if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                        n -= 1;
                    } else {
                        break;
                    }
                }
                self.bytes.extend_from_slice(&[0x8a, n as u8]);
                self.bytes.extend_from_slice(&all[..n]);
            }
        }
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.bytes.push(if v { 0x88 } else { 0x89 });
        self
    }

    pub fn none(&mut self) -> &mut Self {
        self.bytes.push(b'N');
        self
    }

    /// Raw `bytes` (SHORT_BINBYTES or BINBYTES).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        match u8::try_from(v.len()) {
            Ok(n) => self.bytes.extend_from_slice(&[b'C', n]),
            Err(_) => {
                self.bytes.push(b'B');
                self.bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
            }
        }
        self.bytes.extend_from_slice(v);
        self
    }

    /// A `str` (BINUNICODE).
    pub fn text(&mut self, v: &str) -> &mut Self {
        self.bytes.push(b'X');
        self.bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(v.as_bytes());
        self
    }

    /// A tuple of ints.
    pub fn int_tuple(&mut self, values: &[i64]) -> &mut Self {
        self.mark();
        for &v in values {
            self.int(v);
        }
        self.tuple()
    }

    /// Ends the stream with STOP.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.push(b'.');
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes() {
        let mut p = Pickle::new();
        p.int(0).int(255).int(256).int(65535).int(65536).int(-1).int(1 << 40).int(-(1 << 40)).int(i64::MAX);
        let b = p.finish();
        assert_eq!(&b[..2], &[0x80, 3]);
        assert_eq!(*b.last().unwrap(), b'.');
        assert!(b.windows(2).any(|w| w == [b'K', 0]));
        assert!(b.windows(3).any(|w| w == [b'M', 0, 1]));
        assert!(b.windows(5).any(|w| w == [b'J', 0, 0, 1, 0]));
        assert!(b.windows(5).any(|w| w == [b'J', 0xff, 0xff, 0xff, 0xff]), "-1");
        assert!(b.windows(8).any(|w| w == [0x8a, 6, 0, 0, 0, 0, 0, 1]), "1 << 40");
        assert!(b.windows(8).any(|w| w == [0x8a, 6, 0, 0, 0, 0, 0, 0xff]), "-(1 << 40)");
        let mut p = Pickle::new();
        p.bytes(&[7; 300]).bytes(b"ab").text("é");
        let b = p.finish();
        assert_eq!(&b[2..7], &[b'B', 44, 1, 0, 0]);
        assert!(b.windows(4).any(|w| w == [b'C', 2, b'a', b'b']));
        assert!(b.windows(7).any(|w| w == [b'X', 2, 0, 0, 0, 0xc3, 0xa9]));
    }
}
