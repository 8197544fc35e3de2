//! CLIENT subcommands: SETNAME, GETNAME, ID, SETINFO, HELP.

use redis_protocol::resp2::types::BytesFrame;

use super::connection::client_name;
use super::parse::{Parse, option};
use super::{Context, bulk, integer, ok};
use crate::error::CommandError;

/// Subcommands and their arities were checked before this runs (see `Subcommands`).
pub(super) fn client(p: &mut Parse, ctx: &mut Context<'_>) -> Result<BytesFrame, CommandError> {
    let sub = p.bytes()?;
    match option(&sub).as_str() {
        "SETNAME" => {
            ctx.client.name = client_name(p.bytes()?)?;
            Ok(ok())
        }
        "GETNAME" => Ok(ctx.client.name.clone().map_or(BytesFrame::Null, bulk)),
        "ID" => Ok(integer(ctx.client.id)),
        // Client libraries announce themselves on connect (redis-rs does); nothing here
        // reports it, so it is accepted and not kept.
        "SETINFO" => {
            let attribute = p.bytes()?;
            match option(&attribute).as_str() {
                "LIB-NAME" | "LIB-VER" => Ok(ok()),
                _ => Err(CommandError::UnrecognizedOption(
                    String::from_utf8_lossy(&attribute).into_owned(),
                )),
            }
        }
        "HELP" => Ok(BytesFrame::Array(
            [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "ID",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "SETNAME <name>",
                "HELP",
            ]
            .into_iter()
            .map(|line| BytesFrame::SimpleString(line.into()))
            .collect(),
        )),
        _ => Err(CommandError::UnknownSubcommand {
            command: "CLIENT",
            sub: String::from_utf8_lossy(&sub).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::cmd::tests::Harness;
    use crate::config::Config;

    #[tokio::test]
    async fn client_subcommands() {
        let mut h = Harness::new(Config::default());
        assert_eq!(h.wire(&["client", "getname"]), "$-1\r\n");
        assert_eq!(
            h.wire(&["client", "setname", "a b"]),
            "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        );
        assert_eq!(h.wire(&["client", "setname", "web-1"]), "+OK\r\n");
        assert_eq!(h.wire(&["client", "getname"]), "$5\r\nweb-1\r\n");
        assert_eq!(h.wire(&["client", "id"]), ":1\r\n");
        assert_eq!(
            h.wire(&["client", "setinfo", "lib-name", "redis-rs"]),
            "+OK\r\n"
        );
        assert_eq!(
            h.wire(&["client", "setname"]),
            "-ERR wrong number of arguments for 'client|setname' command\r\n"
        );
        assert_eq!(
            h.wire(&["client", "foo"]),
            "-ERR unknown subcommand 'foo'. Try CLIENT HELP.\r\n"
        );
    }
}
