//! The spawn server's messages. A request is a sequence of fields, each a little-endian u32
//! length and its bytes: the runner directory, the working directory, then one `NAME=value`
//! per environment variable; it carries two descriptors, the locked `runner.json` and the
//! log. An answer is `P` and the supervisor's pid (u32, with its pidfd attached when there
//! is one), or `E` and a message.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use super::{SpawnFailure, SpawnRequest, Spawned};
use crate::sys::PidFd;

/// The longest request. A message must fit the socket's send buffer whole (about 208 KiB by
/// default on Linux); a bigger environment goes to an exec'd supervisor instead.
pub const MAX_REQUEST: usize = 160 << 10;
/// The longest answer (an error message naming a path).
pub const MAX_ANSWER: usize = 16 << 10;

/// The request as bytes, or why it cannot be one: the environment must be what exec accepts.
pub fn encode_request(request: &SpawnRequest) -> Result<Vec<u8>, SpawnFailure> {
    let mut out = Vec::new();
    let mut field = |bytes: &[u8]| {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    };
    field(request.dir.as_os_str().as_bytes());
    field(request.cwd.as_os_str().as_bytes());
    for (name, value) in &request.env {
        let (name_bytes, value_bytes) = (name.as_bytes(), value.as_bytes());
        if name_bytes.is_empty() || name_bytes.contains(&b'=') || name_bytes.contains(&0) {
            return Err(SpawnFailure::Refused(format!(
                "environment variable name {name:?} is not valid"
            )));
        }
        if value_bytes.contains(&0) {
            return Err(SpawnFailure::Refused(format!(
                "environment variable {name:?} holds a NUL byte"
            )));
        }
        let mut pair = name_bytes.to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value_bytes);
        field(&pair);
    }
    if out.len() > MAX_REQUEST {
        return Err(SpawnFailure::NotSent(io::Error::other(format!(
            "the request ({} bytes, mostly environment) is larger than {MAX_REQUEST}",
            out.len()
        ))));
    }
    Ok(out)
}

pub fn decode_request(mut bytes: &[u8]) -> Result<SpawnRequest, String> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("a request field is cut short")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("a request field is cut short".into());
        }
        let (field, rest) = rest.split_at(len);
        fields.push(field);
        bytes = rest;
    }
    let [dir, cwd, env @ ..] = fields.as_slice() else {
        return Err("a request without its directories".into());
    };
    let path = |bytes: &[u8]| PathBuf::from(OsStr::from_bytes(bytes));
    let env = env
        .iter()
        .map(|pair| {
            // A name never holds `=` (checked when encoding), so the first one splits.
            let at = pair
                .iter()
                .position(|&b| b == b'=')
                .filter(|&at| at > 0)
                .ok_or("an environment entry without NAME=")?;
            if pair.contains(&0) {
                return Err("an environment entry with a NUL byte".to_string());
            }
            Ok((
                OsString::from_vec(pair[..at].to_vec()),
                OsString::from_vec(pair[at + 1..].to_vec()),
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(SpawnRequest {
        dir: path(dir),
        cwd: path(cwd),
        env,
    })
}

pub fn encode_pid(pid: u32) -> Vec<u8> {
    let mut out = vec![b'P'];
    out.extend_from_slice(&pid.to_le_bytes());
    out
}

pub fn encode_error(message: &str) -> Vec<u8> {
    let mut out = vec![b'E'];
    out.extend_from_slice(message.as_bytes());
    out
}

/// What an answer says. A malformed one is `Unconfirmed`: the server is not to be trusted.
pub fn decode_answer(answer: &[u8], mut fds: Vec<OwnedFd>) -> Result<Spawned, SpawnFailure> {
    let malformed = || SpawnFailure::Unconfirmed(io::Error::other("a malformed answer"));
    match answer.split_first() {
        Some((b'P', pid)) => {
            let pid = <[u8; 4]>::try_from(pid)
                .map(u32::from_le_bytes)
                .map_err(|_| malformed())?;
            Ok(Spawned {
                pid,
                pidfd: fds.pop().map(PidFd::from_owned),
            })
        }
        Some((b'E', message)) => Err(SpawnFailure::Refused(
            String::from_utf8_lossy(message).into_owned(),
        )),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(env: Vec<(OsString, OsString)>) -> SpawnRequest {
        SpawnRequest {
            dir: PathBuf::from("/state/runners/r-1"),
            cwd: PathBuf::from("/work/slot 1"),
            env,
        }
    }

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        let request = request(vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("EMPTY".into(), "".into()),
            ("WITH_EQUALS".into(), "a=b=c".into()),
            ("BYTES".into(), OsString::from_vec(vec![0xff, b'x'])),
        ]);
        let bytes = encode_request(&request).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request);
    }

    #[test]
    fn an_environment_exec_would_refuse_is_refused_by_name() {
        for (name, value, says) in [
            ("BAD", "a\0b", "\"BAD\" holds a NUL byte"),
            ("A=B", "x", "name \"A=B\" is not valid"),
            ("", "x", "name \"\" is not valid"),
        ] {
            let failure = encode_request(&request(vec![(name.into(), value.into())])).unwrap_err();
            assert!(
                matches!(&failure, SpawnFailure::Refused(m) if m.contains(says)),
                "{failure}"
            );
        }
    }

    #[test]
    fn a_request_too_big_for_one_message_is_not_sent() {
        let huge = "x".repeat(MAX_REQUEST);
        let failure = encode_request(&request(vec![("HUGE".into(), huge.into())])).unwrap_err();
        assert!(matches!(failure, SpawnFailure::NotSent(_)), "{failure}");
    }

    #[test]
    fn malformed_requests_and_answers_are_errors() {
        assert!(decode_request(&[5, 0, 0, 0, b'a']).is_err());
        assert!(decode_request(&[1, 0, 0]).is_err());
        let only_dirs = encode_request(&request(vec![])).unwrap();
        assert!(decode_request(&only_dirs[..6]).is_err());
        let mut nameless = only_dirs.clone();
        nameless.extend_from_slice(&[2, 0, 0, 0, b'=', b'x']);
        assert!(decode_request(&nameless).is_err());
        assert!(matches!(
            decode_answer(b"E no room", vec![]),
            Err(SpawnFailure::Refused(m)) if m == " no room"
        ));
        assert!(matches!(
            decode_answer(b"P12", vec![]),
            Err(SpawnFailure::Unconfirmed(_))
        ));
        assert_eq!(decode_answer(&encode_pid(42), vec![]).unwrap().pid, 42);
    }
}
