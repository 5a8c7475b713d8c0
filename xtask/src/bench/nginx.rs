//! nginx as the bench runs it: the fixed-JSON upstream, and the proxy with the seed article's
//! `/v1/chat/completions` location (the seed article's NGINX gateway), each a private instance (own prefix,
//! pid, logs, temp dirs) so nothing touches a system nginx.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::sys::{self, Children};

/// The upstream's answer to every request: a complete, non-streaming chat completion.
pub const COMPLETION_JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;

/// A private nginx instance: its binary and the directory holding its config and state.
pub struct Nginx {
    pub bin: PathBuf,
    pub dir: PathBuf,
    /// Modules this build lacks: their temp-path directives would be config errors.
    without: Vec<String>,
}

impl Nginx {
    pub fn new(bin: &Path, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let v = Command::new(bin)
            .arg("-V")
            .output()
            .map_err(|e| format!("{} -V: {e}", bin.display()))?;
        let text = String::from_utf8_lossy(&v.stderr).into_owned();
        let without = ["fastcgi", "uwsgi", "scgi"]
            .iter()
            .filter(|m| text.contains(&format!("--without-http_{m}_module")))
            .map(|m| m.to_string())
            .collect();
        Ok(Self {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            without,
        })
    }

    /// The main-context and http-context lines every instance shares: one worker, no access
    /// log, everything under this instance's directory.
    fn common(&self, name: &str) -> (String, String) {
        let d = self.dir.join(name);
        let d = d.display();
        let main = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 32768; }}\n"
        );
        let mut http = format!(
            "access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n"
        );
        for m in ["fastcgi", "uwsgi", "scgi"] {
            if !self.without.iter().any(|w| w == m) {
                http.push_str(&format!("{m}_temp_path {d}/{m};\n"));
            }
        }
        (main, http)
    }

    /// Starts an instance called `name` with `server` as its http{} body, pinned to `core`.
    fn start(
        &self,
        children: &mut Children,
        name: &str,
        http_body: &str,
        core: usize,
    ) -> Result<(), String> {
        let (main, http) = self.common(name);
        let conf = format!("{main}http {{\n{http}{http_body}}}\n");
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(&d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        sys::pin_command(&mut cmd, core);
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        children.push(name, child);
        Ok(())
    }

    /// The fast upstream: `COMPLETION_JSON` for any request, keep-alive without limit.
    pub fn start_upstream(
        &self,
        children: &mut Children,
        name: &str,
        port: u16,
        core: usize,
    ) -> Result<(), String> {
        let body = format!(
            "keepalive_requests 10000000;\nkeepalive_timeout 300s;\n\
             server {{\n  listen 127.0.0.1:{port} backlog=4096;\n\
               location / {{\n    default_type application/json;\n    return 200 '{COMPLETION_JSON}';\n  }}\n}}\n"
        );
        self.start(children, name, &body, core)
    }

    /// The proxy: the seed article's chat location (minus its `limit_req`, which ringgate's
    /// bench config does not have either, and with plain HTTP to the upstream).
    pub fn start_proxy(
        &self,
        children: &mut Children,
        name: &str,
        port: u16,
        upstream_port: u16,
        core: usize,
        tls: Option<(u16, &super::tls::BenchTls)>,
    ) -> Result<(), String> {
        // HTTPS beside plain HTTP in the same server{}, as the seed's Service exposes 80 and 443.
        let mut tls_lines = String::new();
        if let Some((tls_port, certs)) = tls {
            let d = self.dir.join(name);
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for (file, pem) in [("tls.crt", &certs.cert_pem), ("tls.key", &certs.key_pem)] {
                std::fs::write(d.join(file), pem).map_err(|e| format!("{file}: {e}"))?;
            }
            tls_lines = format!(
                "  listen 127.0.0.1:{tls_port} ssl backlog=4096;\n  ssl_certificate {0}/tls.crt;\n  ssl_certificate_key {0}/tls.key;\n",
                d.display()
            );
        }
        let body = format!(
            "upstream holy_sheep_chat {{\n  server 127.0.0.1:{upstream_port};\n  keepalive 64;\n  \
               keepalive_timeout 60s;\n  keepalive_requests 10000000;\n}}\n\
             server {{\n  listen 127.0.0.1:{port} backlog=4096;\n{tls_lines}  server_name _;\n  \
               keepalive_requests 10000000;\n  keepalive_timeout 300s;\n\
               location = /health {{\n    return 200 'OK';\n  }}\n\
               location /v1/chat/completions {{\n\
                 proxy_pass http://holy_sheep_chat/chat/completions;\n\
                 proxy_http_version 1.1;\n\
                 proxy_set_header Host api.holysheep.ai;\n\
                 proxy_set_header Connection '';\n\
                 proxy_set_header X-Real-IP $remote_addr;\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_set_header X-Forwarded-Proto $scheme;\n\
                 proxy_buffering off;\n    proxy_cache off;\n    chunked_transfer_encoding on;\n\
                 proxy_connect_timeout 10s;\n    proxy_send_timeout 300s;\n    proxy_read_timeout 300s;\n\
                 proxy_next_upstream error timeout http_502 http_503 http_504;\n\
                 proxy_next_upstream_tries 3;\n    proxy_next_upstream_timeout 30s;\n\
                 rewrite ^/v1/chat/completions(.*)$ /chat/completions$1 break;\n  }}\n}}\n"
        );
        self.start(children, name, &body, core)
    }

    /// The instance's error log (shown when it fails to start).
    pub fn error_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name).join("error.log")).unwrap_or_default()
    }
}
