//! Framed, encrypted line I/O over a byte stream.
//!
//! A connection has two independent halves, so that one thread can block
//! reading while another writes: [`FrameReader`] owns the buffered read side
//! and the [`Opener`]; [`FrameWriter`] owns the write side and the
//! [`Sealer`]. Nothing outside this module and [`crate::frame`] touches
//! base64, 3DES or MACs of session traffic.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::content::Body;
use crate::frame::{Frame, FrameError, Opener, Sealer, MAX_LINE_LEN};

/// Why reading a frame failed. Each ends the connection.
#[derive(Debug)]
pub enum ReadError {
    /// The socket failed (including a read timeout).
    Io(io::Error),
    /// The stream ended in the middle of a line.
    Truncated,
    /// The line was refused: too long, bad base64, bad MAC, bad padding...
    Frame(FrameError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Truncated => f.write_str("connection closed in the middle of a line"),
            ReadError::Frame(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// The outcome of [`read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line is in the buffer, without its `\n` (or `\r\n`).
    Complete,
    /// The stream ended cleanly before any byte of a new line.
    Eof,
    /// The stream ended inside a line.
    Truncated,
    /// The line exceeded the limit; the rest of it was not read.
    TooLong,
}

/// Reads one `\n`-terminated line into `buf`, reading at most `max` bytes
/// before giving up, so a peer cannot make us buffer an endless line.
///
/// Bytes already in `buf` are the start of the line: after a read timeout
/// (an `Err` of kind `WouldBlock` or `TimedOut`) the caller may call again
/// with the same `buf` and nothing is lost. Clear `buf` before a new line.
pub fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Truncated
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > max + 2 {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if buf.len() > max {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// One socket shared by a connection's reader and writer. A `TcpStream`
/// reads and writes through `&TcpStream`, so sharing it behind an `Arc`
/// costs one file descriptor per connection where `try_clone` would cost
/// one per half (which matters with ten thousand connections).
#[derive(Debug, Clone)]
pub struct SharedStream(pub Arc<TcpStream>);

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// The receiving half of an established connection.
pub struct FrameReader<R> {
    inner: R,
    opener: Opener,
    line: Vec<u8>,
}

impl<R: BufRead> FrameReader<R> {
    /// Wraps the buffered reader left by the handshake.
    pub fn new(inner: R, opener: Opener) -> Self {
        FrameReader {
            inner,
            opener,
            line: Vec::new(),
        }
    }

    /// Reads and opens the next frame; `Ok(None)` is a clean end of stream.
    /// A read timeout is returned as `ReadError::Io` and keeps any partial
    /// line, so the caller may simply call again.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        match read_line(&mut self.inner, &mut self.line, MAX_LINE_LEN)? {
            Line::Complete => {}
            Line::Eof => return Ok(None),
            Line::Truncated => return Err(ReadError::Truncated),
            Line::TooLong => return Err(ReadError::Frame(FrameError::TooLong)),
        }
        let frame = self.opener.open(&self.line).map_err(ReadError::Frame);
        self.line.clear();
        // Don't let one large line pin a large buffer for the session's life.
        if self.line.capacity() > 2 * MAX_LINE_LEN / 3 {
            self.line = Vec::new();
        }
        frame.map(Some)
    }

    /// Whether no part of a line has been read: the stream stands between
    /// two frames (its buffer may still hold the next ones).
    pub fn between_frames(&self) -> bool {
        self.line.is_empty()
    }

    /// The reader and the opening half, to rebuild later with
    /// [`FrameReader::new`] (a connection put aside while idle keeps no
    /// buffers).
    pub fn into_parts(self) -> (R, Opener) {
        (self.inner, self.opener)
    }

    /// The underlying reader (to set timeouts).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, mutably (to set deadlines).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<T: std::io::Read> FrameReader<std::io::BufReader<T>> {
    /// Whether bytes are already buffered, so the next frame may not need a
    /// read from the socket (lets a reader batch work until it would block).
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }
}

/// The sending half of an established connection. Frames are sealed into an
/// internal buffer by [`queue`](Self::queue) and written with one syscall by
/// [`flush`](Self::flush), so a writer draining a backlog batches its writes.
pub struct FrameWriter<W> {
    inner: W,
    sealer: Sealer,
    buf: Vec<u8>,
    /// How much of `buf` is already written (after a partial write).
    written: usize,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps the write side left by the handshake.
    pub fn new(inner: W, sealer: Sealer) -> Self {
        FrameWriter {
            inner,
            sealer,
            buf: Vec::new(),
            written: 0,
        }
    }

    /// Seals a frame into the write buffer.
    pub fn queue(&mut self, head: &str, body: Option<&Body>) {
        self.sealer.seal_into(head, body, &mut self.buf);
    }

    /// Seals a frame whose head travels in clear (see [`crate::frame`]).
    pub fn queue_clear(&mut self, head: &str, body: Option<&Body>) {
        self.sealer.seal_clear_into(head, body, &mut self.buf);
    }

    /// Bytes sealed but not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    fn reset_buffer(&mut self) {
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > 4 * MAX_LINE_LEN {
            self.buf = Vec::new();
        }
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = self
            .inner
            .write_all(&self.buf[self.written..])
            .and_then(|()| self.inner.flush());
        self.reset_buffer();
        result
    }

    /// Writes as much as the writer takes without waiting past its write
    /// timeout; returns how many bytes are still to write. Used by writers
    /// that serve many connections and must not wait on one slow reader.
    pub fn write_some(&mut self) -> io::Result<usize> {
        while self.written < self.buf.len() {
            match self.inner.write(&self.buf[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        let left = self.pending();
        if left == 0 {
            self.reset_buffer();
        }
        Ok(left)
    }

    /// Seals a frame into the write buffer, its head in clear if it says so.
    pub fn queue_frame(&mut self, frame: &Frame) {
        self.sealer.seal_frame_into(frame, &mut self.buf);
    }

    /// Seals and writes one frame.
    pub fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.queue_frame(frame);
        self.flush()
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DirectionKeys;

    #[test]
    fn read_line_limits_and_endings() {
        let mut buf = Vec::new();
        let mut r = io::Cursor::new(b"abc\r\ndef\nxyz".to_vec());
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"abc");
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Complete);
        assert_eq!(buf, b"def");
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Truncated);
        buf.clear();
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), Line::Eof);
        let mut long = io::Cursor::new(vec![b'a'; 100]);
        assert_eq!(read_line(&mut long, &mut buf, 10).unwrap(), Line::TooLong);
        let mut exact = io::Cursor::new(b"0123456789A\n".to_vec());
        assert_eq!(read_line(&mut exact, &mut buf, 10).unwrap(), Line::TooLong);
    }

    #[test]
    fn frames_cross_a_byte_stream() {
        let k = DirectionKeys {
            enc: [1; 24],
            mac: [2; 32],
        };
        let mut w = FrameWriter::new(Vec::new(), Sealer::new(&k));
        w.queue("ONE", None);
        w.queue("TWO", None);
        w.flush().unwrap();
        let bytes = w.get_ref().clone();
        let mut r = FrameReader::new(io::Cursor::new(bytes), Opener::new(&k));
        assert_eq!(r.read_frame().unwrap().unwrap().head, "ONE");
        assert_eq!(r.read_frame().unwrap().unwrap().head, "TWO");
        assert!(r.read_frame().unwrap().is_none());
    }
}
