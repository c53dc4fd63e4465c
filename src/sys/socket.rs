//! A connected pair of Unix `SOCK_SEQPACKET` sockets that carry whole messages together with
//! open file descriptors (`SCM_RIGHTS`): how the dispatcher hands a runner's lock and log to
//! the spawn server.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// One end of a message socket. Messages keep their boundaries; each is read whole.
#[derive(Debug)]
pub struct MessageSocket {
    fd: OwnedFd,
}

impl MessageSocket {
    /// Two connected ends, both close-on-exec.
    pub fn pair() -> io::Result<(MessageSocket, MessageSocket)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two new descriptors into the two-element array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((MessageSocket { fd: a }, MessageSocket { fd: b }))
    }

    /// Takes an inherited descriptor (the spawn server's standard input) as a socket.
    pub fn from_owned(fd: OwnedFd) -> MessageSocket {
        MessageSocket { fd }
    }

    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }

    /// Sends one message with copies of `fds` (at most [`MAX_FDS`]).
    pub fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        let mut control = ControlBuffer::new();
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg
        // call, and the control header is filled within the buffer CMSG_SPACE sized.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                let data_len = std::mem::size_of_val(fds) as libc::c_uint;
                msg.msg_control = control.bytes.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
                let header = libc::CMSG_FIRSTHDR(&msg);
                (*header).cmsg_level = libc::SOL_SOCKET;
                (*header).cmsg_type = libc::SCM_RIGHTS;
                (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(header).cast::<RawFd>(),
                    fds.len(),
                );
            }
            loop {
                let sent = libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
                if sent >= 0 {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }

    /// Receives one message into `buf` and the descriptors that came with it into `fds`
    /// (cleared first). Returns the message's length; `Ok(None)`: the other end is closed
    /// (which is why no empty message is ever sent). A message longer than `buf` is an
    /// `InvalidData` error; its descriptors are in `fds` all the same.
    pub fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Option<usize>> {
        fds.clear();
        let mut control = ControlBuffer::new();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; the iovec and control buffer outlive recvmsg, and
        // the control headers are walked with the CMSG macros within the length it returned.
        let received = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.bytes.as_mut_ptr().cast();
            msg.msg_controllen = control.bytes.len() as _;
            let received = loop {
                let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n >= 0 {
                    break n as usize;
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            };
            let mut header = libc::CMSG_FIRSTHDR(&msg);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET
                    && (*header).cmsg_type == libc::SCM_RIGHTS
                {
                    let data = libc::CMSG_DATA(header).cast::<RawFd>();
                    let payload =
                        ((*header).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    for i in 0..payload / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                header = libc::CMSG_NXTHDR(&msg, header);
            }
            if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message or its descriptors did not fit",
                ));
            }
            received
        };
        Ok((received > 0).then_some(received))
    }
}

impl AsRawFd for MessageSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Room for one `SCM_RIGHTS` header with [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C)]
struct ControlBuffer {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; 64],
}

impl ControlBuffer {
    fn new() -> ControlBuffer {
        ControlBuffer {
            _align: [],
            bytes: [0; 64],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_message_carries_its_bytes_and_open_files() {
        let (a, b) = MessageSocket::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"shared").unwrap();
        a.send(b"hello", &[file.as_raw_fd()]).unwrap();
        let (mut buf, mut fds) = ([0; 1024], Vec::new());
        let len = b.recv(&mut buf, &mut fds).unwrap().unwrap();
        assert_eq!(&buf[..len], b"hello");
        assert_eq!(fds.len(), 1);
        let mut copy = File::from(fds.pop().unwrap());
        copy.rewind().unwrap();
        let mut text = String::new();
        copy.read_to_string(&mut text).unwrap();
        assert_eq!(text, "shared");
    }

    #[test]
    fn a_closed_end_reads_as_the_end_and_a_long_message_as_an_error() {
        let (a, b) = MessageSocket::pair().unwrap();
        a.send(&[7; 100], &[]).unwrap();
        let (mut short, mut fds) = ([0; 10], Vec::new());
        assert!(b.recv(&mut short, &mut fds).is_err());
        drop(a);
        assert_eq!(b.recv(&mut [0; 1024], &mut fds).unwrap(), None);
    }
}
