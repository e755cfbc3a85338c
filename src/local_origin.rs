//! Errors of local origin: the OS refused *this process* a resource (file
//! descriptors, socket buffers, memory, local ports). They say nothing about
//! the peer, so they must not count against an upstream instance's health
//! (Envoy calls these local-origin errors), and at accept they mean the
//! proxy should shed load rather than log and spin.

/// Whether `error` is the OS running out of something for this process
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL) rather than a failure
/// of the peer or the network.
pub fn is_local_resource_error(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_buffer_exhaustion_are_local_and_refusals_are_not() {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_resource_error(&std::io::Error::from_raw_os_error(
                code
            )));
        }
        for code in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EHOSTUNREACH,
            libc::ETIMEDOUT,
        ] {
            assert!(!is_local_resource_error(
                &std::io::Error::from_raw_os_error(code)
            ));
        }
        assert!(!is_local_resource_error(&std::io::Error::other(
            "no OS code"
        )));
    }
}
