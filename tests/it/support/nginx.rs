//! A real nginx (Debian's package) in front of labgate in `header` identity mode, started
//! by the test on loopback: one HTTPS server that authenticates users by TLS client
//! certificate (for `curl`), one plain HTTP server with HTTP basic auth (for the neops
//! `RemoteLabClient`, whose base URL carries the credentials). Both pass the user name on
//! in `X-Forwarded-User` and overwrite any client-sent copy. A third server is a public
//! status board: only `/status` and `/status.json`, as the identity `status-board`.
//!
//! The process is stopped when the handle is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::CertFiles;

/// The identity header nginx sets.
pub const USER_HEADER: &str = "X-Forwarded-User";

pub struct Nginx {
    child: Option<Child>,
    /// HTTPS, client certificate required.
    pub tls_port: u16,
    /// HTTP, basic auth required.
    pub basic_port: u16,
    /// HTTP, the status page only, no authentication.
    pub status_port: u16,
    dir: PathBuf,
}

fn nginx_exe() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx not found: install Debian's nginx-light (.ci/setup --test does)");
}

impl Nginx {
    /// `labgate`: where labgate listens; `server`: nginx's own certificate; `client_ca`:
    /// the CA of the users' certificates; `users`: basic-auth (name, password) pairs.
    /// Its three ports are picked at run time.
    pub fn start(
        dir: &Path,
        labgate: SocketAddr,
        server: &CertFiles,
        client_ca: &Path,
        users: &[(&str, &str)],
    ) -> Nginx {
        let (tls_port, basic_port, status_port) =
            (super::free_port(), super::free_port(), super::free_port());
        let htpasswd = dir.join("htpasswd");
        let lines: String = users
            .iter()
            .map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n"))
            .collect();
        std::fs::write(&htpasswd, lines).unwrap();
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let proxy = format!(
            "proxy_pass http://{labgate};\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_buffering off;\n\
             proxy_read_timeout 120s;\n"
        );
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log {d}/access.log;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               map $ssl_client_s_dn $ssl_client_cn {{ \"~(^|,)CN=(?<cn>[^,]+)\" $cn; default \"\"; }}\n\
               server {{\n\
                 listen 127.0.0.1:{tls_port} ssl;\n\
                 ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 ssl_client_certificate {ca}; ssl_verify_client on;\n\
                 location / {{ {proxy} proxy_set_header {USER_HEADER} $ssl_client_cn; }}\n\
               }}\n\
               server {{\n\
                 listen 127.0.0.1:{basic_port};\n\
                 auth_basic \"lab\"; auth_basic_user_file {htpasswd};\n\
                 location / {{ {proxy} proxy_set_header {USER_HEADER} $remote_user; \
                   proxy_set_header Authorization \"\"; }}\n\
               }}\n\
               server {{\n\
                 listen 127.0.0.1:{status_port};\n\
                 location ~ ^/status(\\.json)?$ {{ {proxy} proxy_set_header {USER_HEADER} status-board; }}\n\
                 location / {{ return 403; }}\n\
               }}\n\
             }}\n",
            cert = server.cert.display(),
            key = server.key.display(),
            ca = client_ca.display(),
            htpasswd = htpasswd.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(nginx_exe())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nginx");
        let mut n = Nginx {
            child: Some(child),
            tls_port,
            basic_port,
            status_port,
            dir: dir.to_path_buf(),
        };
        n.wait_listening();
        n
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("nginx exited with {status}:\n{}", self.errors());
            }
            let up = [self.tls_port, self.basic_port, self.status_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen:\n{}",
                self.errors()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn errors(&self) -> String {
        let a = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        format!("{a}{b}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
