//! RELOAD: re-read the config file; pools whose config hash changed are
//! rebuilt. A file that does not load changes nothing and the error
//! names its line and key.

use super::{AdminError, BoxFuture, Command, Context, Reply};

pub struct Reload;

impl Command for Reload {
    fn words(&self) -> &'static [&'static str] {
        &["RELOAD"]
    }

    fn help(&self) -> &'static str {
        "re-read the config file and rebuild the pools that changed"
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        _args: &'a [String],
    ) -> BoxFuture<'a, Result<Reply, AdminError>> {
        Box::pin(async move {
            match ctx.shared.reload("RELOAD") {
                Ok(_) => Ok(Reply::Done("RELOAD".into())),
                Err(e) => Err(AdminError::new(
                    "F0000",
                    format!("reload failed, running config kept: {e}"),
                )),
            }
        })
    }
}
