//! Users, vhosts, permissions and global parameters across restarts. What the management API changes is
//! written, whole, to `definitions.json` in the data directory (RabbitMQ's definitions
//! format, password hashes included; a temporary file renamed over the old one, so a
//! crash leaves one or the other). At start that file is the base: an explicit
//! definitions file or `--amqp-user` is applied over it, as RabbitMQ imports definitions
//! over its database at boot, while the implicit `guest` default applies only to a data
//! directory that has none (so a guest deleted or re-passworded through the API stays so).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;

use super::definitions::{Definitions, access_json};
use super::globals::Globals;
use super::node::NodeError;
use super::store::{DataDir, StoreError};
use super::users::Users;
use super::vhost_meta::VHostMeta;

const FILE: &str = "definitions.json";

fn path(data: &DataDir) -> PathBuf {
    data.root().join(FILE)
}

/// What the node starts with: users, vhosts (with their metadata) and global
/// parameters.
pub struct Access {
    pub users: Users,
    pub vhosts: Vec<String>,
    pub vhost_meta: BTreeMap<String, VHostMeta>,
    pub globals: Globals,
}

/// The users, vhosts and global parameters to start with, from the data directory and
/// the configuration.
pub fn starting(configured: &Definitions, data: Option<&DataDir>) -> Result<Access, NodeError> {
    let kept = data.map(path).filter(|p| p.is_file());
    let Some(kept) = kept else {
        return Ok(Access {
            users: configured.users.clone(),
            vhosts: configured.vhosts.clone(),
            vhost_meta: configured.vhost_meta.clone(),
            globals: configured.globals.clone(),
        });
    };
    let mut base = Definitions::load(&kept)?;
    if configured.explicit {
        base.users.merge(&configured.users);
        base.globals.merge(&configured.globals);
        base.vhost_meta.extend(configured.vhost_meta.clone());
        for vhost in &configured.vhosts {
            if !base.vhosts.contains(vhost) {
                base.vhosts.push(vhost.clone());
            }
        }
    }
    Ok(Access {
        users: base.users,
        vhosts: base.vhosts,
        vhost_meta: base.vhost_meta,
        globals: base.globals,
    })
}

/// Writes the node's users, vhosts, permissions and global parameters, replacing what was
/// kept, and syncs.
pub fn save(
    data: &DataDir,
    users: &Users,
    vhosts: &[String],
    meta: &BTreeMap<String, VHostMeta>,
    globals: &Globals,
) -> Result<(), StoreError> {
    let target = path(data);
    let temporary = target.with_extension("json.tmp");
    let text = access_json(users, vhosts, meta, globals).to_string();
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &target)?;
        fs::File::open(data.root())?.sync_all()
    };
    write().map_err(|e| StoreError::io(&target, e))
}
