//! Voice notes on the client: checking, recording and playing WAV files.
//!
//! A voice note is an ordinary file transfer whose file is a WAV recording.
//! Before one is sent ("SEND VOICE <user> <file>", "RECORD <user|#group>
//! [seconds]") the client reads the file's own header with [`inspect`]:
//! it refuses files that are not WAV (a text file renamed `.wav`, an empty
//! or truncated file) or longer than [`MAX_VOICE`], and learns the note's
//! [`Voice`] (format and duration) to announce with it; a received note
//! is checked the same way before "PLAY <id>" hands it to [`play`].
//!
//! Sound itself goes through the usual command-line tools rather than an
//! audio library: [`record`] runs the first recorder found on `PATH`
//! (`arecord`, `parecord`, `sox`) and [`play`] the first player (`aplay`,
//! `paplay`, `play`, `ffplay`). Both wait for the tool (the API is
//! synchronous) but never forever: a tool still running well after the
//! note's length is killed. When no tool is installed the error names the
//! packages that provide one.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::request::{AudioFormat, Voice};

/// The longest voice note this client records, sends or accepts.
pub const MAX_VOICE: Duration = Duration::from_secs(10 * 60);

/// How long a recorder may run beyond the requested length before it is
/// killed.
const RECORD_SLACK: Duration = Duration::from_secs(5);

/// How long a player may run beyond the note's length before it is killed.
const PLAY_SLACK: Duration = Duration::from_secs(10);

/// How long a recorder stopped with SIGINT gets to finish its file before
/// it is killed outright.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often a running tool is checked on.
const POLL: Duration = Duration::from_millis(20);

/// Why a voice note could not be checked, recorded or played.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file is not a usable WAV recording; the message names the file
    /// and says what is wrong with it.
    #[error("{0}")]
    NotAudio(String),
    /// The note is longer than [`MAX_VOICE`].
    #[error(
        "{}: the voice note lasts {}, longer than the {} limit; record a shorter one",
        .path.display(),
        duration_label(*.duration_ms),
        duration_label(MAX_VOICE.as_millis() as u64)
    )]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Its length.
        duration_ms: u64,
    },
    /// A recording length outside 1 s..=[`MAX_VOICE`] was asked for.
    #[error("cannot record {0} s: choose between 1 and {max} seconds", max = MAX_VOICE.as_secs())]
    BadLength(u64),
    /// No recorder is installed; the message says which packages to install.
    #[error("{0}")]
    NoRecorder(String),
    /// No player is installed; the message says which packages to install.
    #[error("{0}")]
    NoPlayer(String),
    /// A recorder or player could not be started, failed or had to be
    /// killed.
    #[error("{tool} failed ({status}){}", stderr_suffix(.stderr))]
    Tool {
        /// The tool's name, e.g. `arecord`.
        tool: &'static str,
        /// How it ended: its exit status, or why it was stopped.
        status: String,
        /// The end of what it wrote on stderr (may be empty).
        stderr: String,
    },
    /// The file could not be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Reads and checks the WAV file at `path`: its header must parse, its
/// sample rate must not be 0, its data chunk must hold at least one sample
/// and as many bytes as the header announces (the file is not truncated),
/// and it must not last longer than [`MAX_VOICE`].
///
/// The duration is the sample count / (sample rate × channels), in whole
/// milliseconds. Errors: [`AudioError::NotAudio`] (the message names the
/// file and the reason), [`AudioError::TooLong`], [`AudioError::Io`].
pub fn inspect(path: &Path) -> Result<Voice, AudioError> {
    let io_error = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_wav = |reason: &str| {
        AudioError::NotAudio(format!("{}: not a WAV file ({reason})", path.display()))
    };

    let file = File::open(path).map_err(io_error)?;
    let file_len = file.metadata().map_err(io_error)?.len();
    if file_len == 0 {
        return Err(not_wav("the file is empty"));
    }
    let reader = hound::WavReader::new(BufReader::new(file)).map_err(|e| match e {
        // Not an OS error: hound's own "Failed to read enough bytes".
        hound::Error::IoError(e) if e.raw_os_error().is_none() => {
            not_wav("the file ends inside its header")
        }
        hound::Error::IoError(e) => io_error(e),
        hound::Error::FormatError(why) => not_wav(why),
        hound::Error::Unsupported => {
            not_wav("an encoding this client cannot read; record PCM or float WAV")
        }
        other => not_wav(&other.to_string()),
    })?;
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        return Err(not_wav("its sample rate is 0"));
    }
    let samples = u64::from(reader.len());
    if samples == 0 {
        return Err(AudioError::NotAudio(format!(
            "{}: the WAV file holds no sound (0 samples)",
            path.display()
        )));
    }

    // hound stops reading right after the data chunk's header, whose last
    // four bytes are the chunk's length: check that the file holds it all.
    let mut inner = reader.into_inner();
    let data_start = inner.stream_position().map_err(io_error)?;
    let mut len_bytes = [0u8; 4];
    inner
        .seek(SeekFrom::Start(data_start.saturating_sub(4)))
        .and_then(|_| inner.read_exact(&mut len_bytes))
        .map_err(io_error)?;
    let data_len = u64::from(u32::from_le_bytes(len_bytes));
    let held = file_len.saturating_sub(data_start);
    if held < data_len {
        return Err(not_wav(&format!(
            "truncated: its header announces {data_len} bytes of sound but the file holds {held}"
        )));
    }

    let per_second = u64::from(spec.sample_rate) * u64::from(spec.channels);
    let duration_ms = samples * 1000 / per_second;
    if duration_ms > MAX_VOICE.as_millis() as u64 {
        return Err(AudioError::TooLong {
            path: path.to_path_buf(),
            duration_ms,
        });
    }
    Ok(Voice {
        format: AudioFormat::Wav,
        duration_ms,
    })
}

/// A duration as minutes:seconds, e.g. "0:07", "1:05", "12:00"; seconds are
/// rounded up, so a 0.2 s note shows "0:01".
pub fn duration_label(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// One argument of a tool's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    /// Passed as is.
    Lit(&'static str),
    /// The file recorded to or played.
    File,
    /// The recording length, in seconds.
    Secs,
}

/// A recorder or player this module knows how to run.
#[derive(Debug)]
struct Candidate {
    name: &'static str,
    args: &'static [Arg],
    /// Whether it runs until stopped (killed after the recording length)
    /// rather than stopping by itself.
    until_stopped: bool,
}

use Arg::{File as F, Lit as L, Secs as S};

/// The recorders, in order of preference.
const RECORDERS: &[Candidate] = &[
    Candidate {
        name: "arecord",
        args: &[L("-q"), L("-f"), L("cd"), L("-t"), L("wav"), L("-d"), S, F],
        until_stopped: false,
    },
    Candidate {
        name: "parecord",
        args: &[L("--file-format=wav"), F],
        until_stopped: true,
    },
    Candidate {
        name: "sox",
        args: &[L("-q"), L("-d"), F, L("trim"), L("0"), S],
        until_stopped: false,
    },
];

/// The players, in order of preference.
const PLAYERS: &[Candidate] = &[
    Candidate {
        name: "aplay",
        args: &[L("-q"), F],
        until_stopped: false,
    },
    Candidate {
        name: "paplay",
        args: &[F],
        until_stopped: false,
    },
    Candidate {
        name: "play",
        args: &[L("-q"), F],
        until_stopped: false,
    },
    Candidate {
        name: "ffplay",
        args: &[L("-nodisp"), L("-autoexit"), L("-loglevel"), L("quiet"), F],
        until_stopped: false,
    },
];

/// `kill`, used to stop a recorder gently (SIGINT) so it finishes its file.
const KILL: &[Candidate] = &[Candidate {
    name: "kill",
    args: &[],
    until_stopped: false,
}];

const NO_RECORDER: &str =
    "no recorder found: install alsa-utils (arecord), pulseaudio-utils (parecord) or sox";
const NO_PLAYER: &str = "no player found: install alsa-utils (aplay), pulseaudio-utils (paplay), \
     sox (play) or ffmpeg (ffplay)";

/// An installed recorder or player, found by [`recorder`] or [`player`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// Its name, e.g. `arecord`.
    pub name: &'static str,
    /// Where it was found on `PATH`.
    pub path: PathBuf,
    args: &'static [Arg],
    until_stopped: bool,
}

impl Tool {
    /// The command line's arguments for `file` (and `secs`, for recorders).
    fn command_args(&self, file: &Path, secs: u64) -> Vec<OsString> {
        self.args
            .iter()
            .map(|arg| match arg {
                Arg::Lit(s) => OsString::from(s),
                Arg::Secs => OsString::from(secs.to_string()),
                Arg::File => file_arg(file),
            })
            .collect()
    }
}

/// `file` as an argument no tool can take for an option ("-x.wav" becomes
/// "./-x.wav").
fn file_arg(file: &Path) -> OsString {
    if file.is_relative() && file.as_os_str().as_encoded_bytes().starts_with(b"-") {
        Path::new(".").join(file).into_os_string()
    } else {
        file.as_os_str().to_owned()
    }
}

/// The first recorder installed, in order of preference: `arecord -q -f cd
/// -t wav -d <secs> <file>`, `parecord --file-format=wav <file>` (stopped
/// after `<secs>`), `sox -q -d <file> trim 0 <secs>`.
pub fn recorder() -> Option<Tool> {
    find_in(&path_var(), RECORDERS)
}

/// The first player installed, in order of preference: `aplay -q <file>`,
/// `paplay <file>`, `play -q <file>` (sox), `ffplay -nodisp -autoexit
/// -loglevel quiet <file>`.
pub fn player() -> Option<Tool> {
    find_in(&path_var(), PLAYERS)
}

fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// The first of `candidates` (in their order, whatever the order of the
/// directories) that is an executable file in one of the directories of
/// `path_var` (a `PATH` value). Empty entries (which would mean the current
/// directory) are skipped.
fn find_in(path_var: &OsStr, candidates: &[Candidate]) -> Option<Tool> {
    let dirs: Vec<PathBuf> = std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    candidates.iter().find_map(|candidate| {
        dirs.iter()
            .map(|dir| dir.join(candidate.name))
            .find(|path| is_executable(path))
            .map(|path| Tool {
                name: candidate.name,
                path,
                args: candidate.args,
                until_stopped: candidate.until_stopped,
            })
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Records `secs` seconds (1..=[`MAX_VOICE`]) from the default microphone
/// into `out` (a `.wav` path, overwritten) with the first recorder
/// installed, then [`inspect`]s the result.
///
/// Errors: [`AudioError::BadLength`] for a length out of range,
/// [`AudioError::NoRecorder`] when no recorder is installed,
/// [`AudioError::Tool`] when it fails or is still running `secs` + 5 s
/// later (it is then killed), and [`inspect`]'s errors when what it wrote
/// is not a usable recording.
pub fn record(out: &Path, secs: u64) -> Result<Voice, AudioError> {
    record_with(&path_var(), out, secs)
}

/// [`record`] with the recorder looked for in `path_var` instead of `PATH`.
fn record_with(path_var: &OsStr, out: &Path, secs: u64) -> Result<Voice, AudioError> {
    if secs == 0 || secs > MAX_VOICE.as_secs() {
        return Err(AudioError::BadLength(secs));
    }
    let tool = find_in(path_var, RECORDERS)
        .ok_or_else(|| AudioError::NoRecorder(NO_RECORDER.to_string()))?;
    let length = Duration::from_secs(secs);
    let stop_after = tool.until_stopped.then_some(length);
    run(
        &tool,
        &tool.command_args(out, secs),
        stop_after,
        length + RECORD_SLACK,
        path_var,
    )?;
    inspect(out)
}

/// Plays the voice note at `path` with the first player installed, and
/// waits for it to finish. The file is [`inspect`]ed first; a player still
/// running 10 s after the note's end is killed.
///
/// Errors: [`inspect`]'s, [`AudioError::NoPlayer`] (naming the packages to
/// install) when no player is installed, [`AudioError::Tool`] when it
/// fails or has to be killed.
pub fn play(path: &Path) -> Result<(), AudioError> {
    play_with(&path_var(), path)
}

/// [`play`] with the player looked for in `path_var` instead of `PATH`.
fn play_with(path_var: &OsStr, path: &Path) -> Result<(), AudioError> {
    let info = inspect(path)?;
    let tool =
        find_in(path_var, PLAYERS).ok_or_else(|| AudioError::NoPlayer(NO_PLAYER.to_string()))?;
    let limit = Duration::from_millis(info.duration_ms) + PLAY_SLACK;
    run(&tool, &tool.command_args(path, 0), None, limit, path_var)
}

/// Runs `tool` with `args` and waits for it, at most `limit` (then it is
/// killed and that is an error). With `stop_after`, the tool is expected to
/// run until stopped: after that long it is sent SIGINT (through `kill`
/// from `path_var`, so it can finish its file; SIGKILL when there is no
/// `kill`, or if it is still running [`STOP_GRACE`] later), and however it
/// ends then is a success.
fn run(
    tool: &Tool,
    args: &[OsString],
    stop_after: Option<Duration>,
    limit: Duration,
    path_var: &OsStr,
) -> Result<(), AudioError> {
    let failed = |status: String, stderr: String| AudioError::Tool {
        tool: tool.name,
        status,
        stderr,
    };
    let mut child = spawn(&tool.path, args).map_err(|e| {
        failed(
            format!("could not start {}", tool.path.display()),
            e.to_string(),
        )
    })?;
    let stderr = read_stderr(&mut child);

    let started = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed("could not wait for it".to_string(), e.to_string()));
            }
        }
        let now = Instant::now();
        if now.duration_since(started) >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(
                format!(
                    "still running after {} s, so it was stopped",
                    limit.as_secs_f64().round()
                ),
                stderr.collect(),
            ));
        }
        match (stop_after, stopped_at) {
            (Some(after), None) if now.duration_since(started) >= after => {
                interrupt(&mut child, path_var);
                stopped_at = Some(now);
            }
            (_, Some(at)) if now.duration_since(at) >= STOP_GRACE => {
                let _ = child.kill();
            }
            _ => {}
        }
        thread::sleep(POLL);
    };
    if status.success() || stopped_at.is_some() {
        Ok(())
    } else {
        Err(failed(describe(status), stderr.collect()))
    }
}

/// Starts `program`, retrying briefly if it is "text file busy" (a script
/// just written, whose write handle another thread's fork briefly holds).
fn spawn(program: &Path, args: &[OsString]) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        let result = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match result {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Asks `child` to stop with SIGINT, or kills it when there is no `kill`.
fn interrupt(child: &mut Child, path_var: &OsStr) {
    let sent = find_in(path_var, KILL).is_some_and(|kill| {
        Command::new(&kill.path)
            .args(["-s", "INT", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if !sent {
        let _ = child.kill();
    }
}

/// What a tool wrote on stderr, read on a thread so a chatty tool never
/// blocks on a full pipe.
struct Stderr(Option<mpsc::Receiver<Vec<u8>>>);

impl Stderr {
    /// The end of it (the last 500 bytes or so), trimmed. Waits a little
    /// for the pipe to close: a grandchild may keep it open.
    fn collect(self) -> String {
        let Some(rx) = self.0 else {
            return String::new();
        };
        let bytes = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        let mut start = text.len().saturating_sub(500);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].trim().to_string()
    }
}

fn read_stderr(child: &mut Child) -> Stderr {
    Stderr(child.stderr.take().map(|mut pipe| {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        rx
    }))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use tempfile::TempDir;

    /// Writes a WAV of `secs` seconds of silence-ish samples.
    fn write_wav(path: &Path, sample_rate: u32, channels: u16, bits: u16, secs: f64) {
        let spec = hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        let frames = (f64::from(sample_rate) * secs).round() as u64;
        for i in 0..frames * u64::from(channels) {
            let sample = ((i % 64) as i32 - 32) * 100;
            if bits == 8 {
                writer.write_sample(sample as i8).unwrap();
            } else {
                writer.write_sample(sample as i16).unwrap();
            }
        }
        writer.finalize().unwrap();
    }

    /// Writes an executable shell script `name` in `dir`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn message(err: AudioError) -> String {
        err.to_string()
    }

    #[test]
    fn duration_of_8khz_mono_one_and_a_half_seconds() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("note.wav");
        write_wav(&path, 8000, 1, 8, 1.5);
        assert_eq!(
            inspect(&path).unwrap(),
            Voice {
                format: AudioFormat::Wav,
                duration_ms: 1500
            }
        );
    }

    #[test]
    fn duration_of_44khz_stereo_16_bit_two_seconds() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("note.wav");
        write_wav(&path, 44_100, 2, 16, 2.0);
        assert_eq!(inspect(&path).unwrap().duration_ms, 2000);
    }

    #[test]
    fn text_file_named_wav_is_refused_naming_the_file() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("x.wav");
        fs::write(&path, "hello, this is not a recording\n").unwrap();
        let err = inspect(&path).unwrap_err();
        assert!(matches!(err, AudioError::NotAudio(_)), "{err:?}");
        let text = message(err);
        assert!(text.contains("x.wav"), "{text}");
        assert!(text.contains("not a WAV file"), "{text}");
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("empty.wav");
        fs::write(&path, b"").unwrap();
        let text = message(inspect(&path).unwrap_err());
        assert!(
            text.contains("empty.wav") && text.contains("empty"),
            "{text}"
        );
    }

    #[test]
    fn wav_truncated_mid_data_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("cut.wav");
        write_wav(&path, 8000, 1, 16, 1.0);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = inspect(&path).unwrap_err();
        assert!(matches!(err, AudioError::NotAudio(_)), "{err:?}");
        let text = message(err);
        assert!(
            text.contains("cut.wav") && text.contains("truncated"),
            "{text}"
        );
    }

    #[test]
    fn wav_truncated_inside_header_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("head.wav");
        write_wav(&path, 8000, 1, 16, 1.0);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..20]).unwrap();
        let err = inspect(&path).unwrap_err();
        assert!(matches!(err, AudioError::NotAudio(_)), "{err:?}");
    }

    #[test]
    fn sample_rate_zero_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("zero.wav");
        write_wav(&path, 8000, 1, 16, 0.1);
        let mut bytes = fs::read(&path).unwrap();
        // The canonical 44-byte header: sample rate at 24, byte rate at 28
        // (both zeroed, so the header stays consistent).
        bytes[24..32].fill(0);
        fs::write(&path, &bytes).unwrap();
        let text = message(inspect(&path).unwrap_err());
        assert!(text.contains("sample rate is 0"), "{text}");
    }

    #[test]
    fn wav_without_samples_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("silent.wav");
        write_wav(&path, 8000, 1, 16, 0.0);
        let text = message(inspect(&path).unwrap_err());
        assert!(text.contains("no sound"), "{text}");
    }

    #[test]
    fn note_longer_than_max_voice_is_refused() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("long.wav");
        // 601 s at 100 Hz, 8-bit mono: small file, long note.
        write_wav(&path, 100, 1, 8, 601.0);
        let err = inspect(&path).unwrap_err();
        assert!(
            matches!(
                err,
                AudioError::TooLong {
                    duration_ms: 601_000,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = message(err);
        assert!(text.contains("10:01") && text.contains("10:00"), "{text}");
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = inspect(Path::new("/nonexistent/muchat-note.wav")).unwrap_err();
        assert!(matches!(err, AudioError::Io { .. }), "{err:?}");
        assert!(message(err).contains("muchat-note.wav"));
    }

    #[test]
    fn duration_labels() {
        assert_eq!(duration_label(0), "0:00");
        assert_eq!(duration_label(200), "0:01");
        assert_eq!(duration_label(1000), "0:01");
        assert_eq!(duration_label(1001), "0:02");
        assert_eq!(duration_label(7000), "0:07");
        assert_eq!(duration_label(65_000), "1:05");
        assert_eq!(duration_label(59_500), "1:00");
        assert_eq!(duration_label(720_000), "12:00");
    }

    #[test]
    fn find_in_follows_preference_order_not_path_order() {
        let first = TempDir::new().unwrap();
        let second = TempDir::new().unwrap();
        script(first.path(), "sox", "exit 0");
        let parecord = script(second.path(), "parecord", "exit 0");
        let path_var = std::env::join_paths([first.path(), second.path()]).unwrap();
        let tool = find_in(&path_var, RECORDERS).unwrap();
        assert_eq!(tool.name, "parecord");
        assert_eq!(tool.path, parecord);

        let arecord = script(second.path(), "arecord", "exit 0");
        let tool = find_in(&path_var, RECORDERS).unwrap();
        assert_eq!((tool.name, tool.path), ("arecord", arecord));
    }

    #[test]
    fn find_in_skips_non_executables_and_directories() {
        let dir = TempDir::new().unwrap();
        let aplay = dir.path().join("aplay");
        fs::write(&aplay, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&aplay, fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(dir.path().join("paplay")).unwrap();
        let path_var = dir.path().as_os_str().to_owned();
        assert_eq!(find_in(&path_var, PLAYERS), None);

        let ffplay = script(dir.path(), "ffplay", "exit 0");
        let tool = find_in(&path_var, PLAYERS).unwrap();
        assert_eq!((tool.name, tool.path), ("ffplay", ffplay));
    }

    #[test]
    fn find_in_with_empty_path_finds_nothing() {
        assert_eq!(find_in(OsStr::new(""), RECORDERS), None);
        assert_eq!(find_in(OsStr::new(""), PLAYERS), None);
    }

    #[test]
    fn command_lines() {
        let dir = TempDir::new().unwrap();
        for name in ["arecord", "parecord", "sox", "ffplay"] {
            script(dir.path(), name, "exit 0");
        }
        let path_var = dir.path().as_os_str().to_owned();
        let arecord = find_in(&path_var, RECORDERS).unwrap();
        assert_eq!(
            arecord.command_args(Path::new("/tmp/n.wav"), 7),
            ["-q", "-f", "cd", "-t", "wav", "-d", "7", "/tmp/n.wav"]
        );
        let ffplay = find_in(&path_var, PLAYERS).unwrap();
        assert_eq!(
            ffplay.command_args(Path::new("-n.wav"), 0),
            ["-nodisp", "-autoexit", "-loglevel", "quiet", "./-n.wav"]
        );
    }

    #[test]
    fn record_with_fake_arecord_returns_the_voice_info() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        let source = work.path().join("source.wav");
        write_wav(&source, 8000, 1, 16, 3.0);
        let args = work.path().join("args");
        script(
            tools.path(),
            "arecord",
            &format!(
                "printf '%s\\n' \"$@\" > '{}'\nfor a; do out=$a; done\ncp '{}' \"$out\"",
                args.display(),
                source.display()
            ),
        );
        let out = work.path().join("out.wav");
        let info = record_with(tools.path().as_os_str(), &out, 3).unwrap();
        assert_eq!(
            info,
            Voice {
                format: AudioFormat::Wav,
                duration_ms: 3000
            }
        );
        assert_eq!(
            fs::read_to_string(&args).unwrap(),
            format!("-q\n-f\ncd\n-t\nwav\n-d\n3\n{}\n", out.display())
        );
    }

    #[test]
    fn record_with_failing_recorder_reports_status_and_stderr() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        script(
            tools.path(),
            "arecord",
            "echo 'arecord: audio open error: No such file or directory' >&2\nexit 1",
        );
        let err = record_with(tools.path().as_os_str(), &work.path().join("o.wav"), 2).unwrap_err();
        assert!(
            matches!(
                err,
                AudioError::Tool {
                    tool: "arecord",
                    ..
                }
            ),
            "{err:?}"
        );
        let text = message(err);
        assert!(text.contains("exit status 1"), "{text}");
        assert!(text.contains("audio open error"), "{text}");
    }

    #[test]
    fn record_with_recorder_writing_garbage_is_not_audio() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        script(
            tools.path(),
            "sox",
            "for a; do case $a in *.wav) echo junk > \"$a\";; esac; done",
        );
        let out = work.path().join("o.wav");
        let err = record_with(tools.path().as_os_str(), &out, 1).unwrap_err();
        assert!(matches!(err, AudioError::NotAudio(_)), "{err:?}");
    }

    #[test]
    fn record_with_parecord_is_stopped_after_the_length() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        let source = work.path().join("source.wav");
        write_wav(&source, 8000, 1, 16, 1.0);
        // Writes its file, then runs until stopped (no `kill` on this PATH:
        // it gets SIGKILL).
        script(
            tools.path(),
            "parecord",
            &format!(
                "for a; do out=$a; done\ncp '{}' \"$out\"\nexec sleep 30",
                source.display()
            ),
        );
        let started = Instant::now();
        let info = record_with(tools.path().as_os_str(), &work.path().join("o.wav"), 1).unwrap();
        assert_eq!(info.duration_ms, 1000);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn record_with_no_tools_names_the_packages() {
        let empty = TempDir::new().unwrap();
        let err =
            record_with(empty.path().as_os_str(), &empty.path().join("o.wav"), 5).unwrap_err();
        assert!(matches!(err, AudioError::NoRecorder(_)), "{err:?}");
        let text = message(err);
        assert!(
            text.contains("arecord") && text.contains("alsa-utils"),
            "{text}"
        );
    }

    #[test]
    fn record_with_refuses_lengths_out_of_range() {
        let empty = TempDir::new().unwrap();
        let out = empty.path().join("o.wav");
        for secs in [0, MAX_VOICE.as_secs() + 1] {
            let err = record_with(empty.path().as_os_str(), &out, secs).unwrap_err();
            assert!(
                matches!(err, AudioError::BadLength(s) if s == secs),
                "{err:?}"
            );
        }
    }

    #[test]
    fn play_with_fake_player_is_called_with_the_path() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        let note = work.path().join("note.wav");
        write_wav(&note, 8000, 1, 16, 0.5);
        let args = work.path().join("args");
        script(
            tools.path(),
            "paplay",
            &format!("printf '%s\\n' \"$@\" > '{}'", args.display()),
        );
        play_with(tools.path().as_os_str(), &note).unwrap();
        assert_eq!(
            fs::read_to_string(&args).unwrap(),
            format!("{}\n", note.display())
        );
    }

    #[test]
    fn play_with_no_tools_names_the_packages() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        let note = work.path().join("note.wav");
        write_wav(&note, 8000, 1, 16, 0.5);
        let err = play_with(tools.path().as_os_str(), &note).unwrap_err();
        assert!(matches!(err, AudioError::NoPlayer(_)), "{err:?}");
        let text = message(err);
        assert!(
            text.contains("aplay") && text.contains("alsa-utils"),
            "{text}"
        );
    }

    #[test]
    fn play_with_refuses_a_file_that_is_not_audio() {
        let tools = TempDir::new().unwrap();
        let work = TempDir::new().unwrap();
        let called = work.path().join("called");
        script(
            tools.path(),
            "aplay",
            &format!("touch '{}'", called.display()),
        );
        let note = work.path().join("x.wav");
        fs::write(&note, "text").unwrap();
        let err = play_with(tools.path().as_os_str(), &note).unwrap_err();
        assert!(matches!(err, AudioError::NotAudio(_)), "{err:?}");
        assert!(!called.exists());
    }

    #[test]
    fn run_kills_a_tool_that_outlives_its_limit() {
        let tools = TempDir::new().unwrap();
        script(tools.path(), "aplay", "exec sleep 30");
        let tool = find_in(tools.path().as_os_str(), PLAYERS).unwrap();
        let started = Instant::now();
        let err = run(
            &tool,
            &[],
            None,
            Duration::from_millis(300),
            tools.path().as_os_str(),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(message(err).contains("stopped"));
    }
}
