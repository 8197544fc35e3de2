//! The demo page. Plain server-rendered HTML with every dynamic value escaped; a few lines
//! of script keep a per-browser history of which node answered and whether the session
//! was still there, which is the whole point of the demo.

use std::fmt::Write;

use crate::routes::SessionView;
use crate::sessions::SessionMode;

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn page(view: &SessionView) -> String {
    let node = escape(&view.node);
    let mode = view.mode;
    let session = view
        .session
        .as_deref()
        .map(escape)
        .unwrap_or_else(|| "none".into());
    let user_html = match &view.user {
        Some(u) => format!("logged in as <b>{}</b>", escape(u)),
        None => "anonymous".to_string(),
    };
    let mut cart = String::new();
    for item in &view.cart {
        let _ = write!(cart, "<li>{}</li>", escape(item));
    }
    if cart.is_empty() {
        cart.push_str("<li><i>empty</i></li>");
    }
    let logged_in = view.user.is_some();
    // Tokens are not indexed per user: there is no "everywhere" to log out of in jwt mode.
    let everywhere = if view.mode == SessionMode::Jwt {
        ""
    } else {
        r#"<form method="post" action="/logout-everywhere" onsubmit="localStorage.setItem('loggedOut', '1')"><button>Log out everywhere</button></form>"#
    };
    let version = view.version;
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{node} · {mode} sessions</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }}
.node {{ font-size: 2rem; font-weight: 700; }}
table {{ border-collapse: collapse; }} td {{ padding: .15rem .8rem .15rem 0; }}
form {{ display: inline-block; margin: .3rem 1rem .3rem 0; }}
.ok {{ color: #176b2c; }} .lost {{ color: #b00020; font-weight: 700; }}
</style></head><body>
<p>This page was served by <span class="node" id="node">{node}</span></p>
<table>
<tr><td>session mode</td><td id="mode">{mode}</td></tr>
<tr><td>session</td><td id="session">{session}</td></tr>
<tr><td>user</td><td id="user">{user_html}</td></tr>
<tr><td>version</td><td id="version">{version}</td></tr>
</table>
<h3>Cart</h3><ul id="cart">{cart}</ul>
<form method="post" action="/login"><input name="name" placeholder="your name" maxlength="64" required> <button>Log in</button></form>
<form method="post" action="/cart"><input name="item" placeholder="item" maxlength="64" required> <button>Add to cart</button></form>
<form method="post" action="/logout" onsubmit="localStorage.setItem('loggedOut', '1')"><button>Log out</button></form>
{everywhere}
<h3>Your last requests</h3><ol id="history" reversed></ol>
<script>
const h = JSON.parse(localStorage.getItem("history") || "[]");
const wasIn = h.length > 0 && h[h.length - 1].in;
const loggedOut = localStorage.getItem("loggedOut") === "1";
localStorage.removeItem("loggedOut");
h.push({{ node: "{node}", in: {logged_in}, lost: wasIn && !{logged_in} && !loggedOut }});
while (h.length > 12) h.shift();
localStorage.setItem("history", JSON.stringify(h));
document.getElementById("history").innerHTML = h.slice().reverse().map(r =>
  `<li>${{r.node}}: ${{r.lost ? '<span class="lost">session lost</span>' : r.in ? '<span class="ok">logged in</span>' : 'anonymous'}}</li>`).join("");
</script>
</body></html>
"#
    )
}
