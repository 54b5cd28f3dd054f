//! Linux capabilities by name, and the set Docker gives a container's processes.

pub use agent_protocol::caps::DOCKER_DEFAULT;
use agent_protocol::caps::NAMES;

/// A capability name this agent does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// The bit mask of `names` (`CAP_CHOWN` or `chown`, any case).
pub fn mask<S: AsRef<str>>(names: &[S]) -> Result<u64, UnknownCapability> {
    let mut mask = 0u64;
    for name in names {
        let name = name.as_ref();
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let bit = NAMES
            .iter()
            .position(|n| *n == bare)
            .ok_or_else(|| UnknownCapability(name.to_owned()))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_default_is_the_well_known_mask() {
        // What `grep CapBnd /proc/self/status` shows in a default Docker container.
        assert_eq!(mask(DOCKER_DEFAULT).unwrap(), 0xa80425fb);
    }

    #[test]
    fn names() {
        assert_eq!(mask(&["CAP_CHOWN"]).unwrap(), 1);
        assert_eq!(mask(&["sys_admin", "Cap_Kill"]).unwrap(), 1 << 21 | 1 << 5);
        assert_eq!(mask(&["CAP_CHECKPOINT_RESTORE"]).unwrap(), 1 << 40);
        assert_eq!(mask::<&str>(&[]).unwrap(), 0);
        assert_eq!(
            mask(&["CAP_FLY"]).unwrap_err(),
            UnknownCapability("CAP_FLY".into())
        );
    }
}
