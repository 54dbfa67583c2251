//! A tiny W3C WebDriver client over plain HTTP JSON (ureq): starts `chromedriver` on a free
//! 127.0.0.1 port and drives headless Chromium. Only what the dashboard test needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long to wait for a condition in the page before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// `chromedriver` on PATH, if installed.
pub fn find_chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromedriver"))
        .find(|candidate| candidate.is_file())
}

/// chromedriver plus one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    url: String,
    agent: ureq::Agent,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start(chromedriver: &Path) -> Browser {
        Browser::launch(chromedriver, None)
    }

    /// Like [`Browser::start`], with downloads saved into `downloads` without asking.
    pub fn start_with_downloads(chromedriver: &Path, downloads: &Path) -> Browser {
        Browser::launch(chromedriver, Some(downloads))
    }

    fn launch(chromedriver: &Path, downloads: Option<&Path>) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            agent,
            profile,
        };
        browser.wait_until_ready();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,800".to_owned(),
        ];
        args.push(format!(
            "--user-data-dir={}",
            browser.profile.path().display()
        ));
        let mut options = json!({ "args": args });
        if Path::new("/usr/bin/chromium").is_file() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        if let Some(dir) = downloads {
            options["prefs"] = json!({
                "download.default_directory": dir,
                "download.prompt_for_download": false,
            });
        }
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": options }
            }
        });
        let session = browser.send("POST", "/session", Some(capabilities));
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"))
            .to_owned();
        browser.url = format!("{}/session/{id}", browser.url);
        browser
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut response) = self.agent.get(&format!("{}/status", self.url)).call() {
                let text = response.body_mut().read_to_string().unwrap_or_default();
                let status: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if status["value"]["ready"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One WebDriver command; returns its `value`, panics on a WebDriver error.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut response = result.unwrap_or_else(|err| panic!("webdriver {method} {path}: {err}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(
            status < 400,
            "webdriver {method} {path} answered {status}: {reply}"
        );
        reply["value"].clone()
    }

    /// Opens a URL and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.send("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs a script in the page (`return …` gives its value).
    pub fn eval(&self, script: &str) -> Value {
        self.send(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Evaluates `script` until it returns something other than null, false, 0 or "", and
    /// returns that. Fails after [`WAIT`], naming `what`.
    pub fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(script);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page says: {}",
                self.eval("return document.body.innerText.slice(0, 2000)")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.send(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {found}"))
            .to_owned()
    }

    /// Waits until the element is visible, then clicks it like a user.
    pub fn click(&self, css: &str) {
        self.wait_visible(css);
        let id = self.element(css);
        self.send("POST", &format!("/element/{id}/click"), None);
    }

    /// Waits until the element is visible, then types into it.
    pub fn type_into(&self, css: &str, text: &str) {
        self.wait_visible(css);
        let id = self.element(css);
        self.send(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Waits until `css` matches an element that is rendered and not disabled.
    pub fn wait_visible(&self, css: &str) {
        let selector = serde_json::to_string(css).expect("selector");
        self.wait_for(
            &format!("`{css}` to be visible"),
            &format!(
                "const el = document.querySelector({selector});
                 return !!el && el.getClientRects().length > 0 && !el.disabled;"
            ),
        );
    }

    /// Resizes the window (for screenshots).
    pub fn set_window(&self, width: u32, height: u32) {
        self.send(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.send("GET", "/screenshot", None);
        decode_base64(encoded.as_str().expect("base64 screenshot"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; then chromedriver itself.
        if self.url.contains("/session/") {
            let _ = self.agent.delete(&self.url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
pub fn decode_base64(text: &str) -> Vec<u8> {
    fn value(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    }
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (value(*c) << (18 - 6 * i)));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("YWJj"), b"abc");
}
