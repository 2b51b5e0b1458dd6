//! Drawing the full-screen client: a pure function of [`App`], so the
//! layout is tested on ratatui's test backend.
//!
//! ```text
//! ┌Conversations──┐┌#ops───────────────────────────────────────┐
//! │ server        ││14:03 <bob> the build is green             │
//! │>#ops          ││14:04 <alice> shipping it                  │
//! │ @carol (2)    ││                                           │
//! └───────────────┘└───────────────────────────────────────────┘
//!  big.iso (sending) [#####.....] 48% of 50 MB, 14 MB/s, 2 s left
//! ┌alice> ───────────────────────────────────────────────────────┐
//! │hello                                                        │
//! └─────────────────────────────────────────────────────────────┘
//!  127.0.0.1:9000  SHA256:Zw…  alice  online           ? keys
//! ```

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, Paragraph};
use ratatui::Frame;

use crate::names::Username;

use super::super::chat::{gauge, nick_color, wrap};
use super::app::App;

/// The key help (`?`).
const KEYS: &[(&str, &str)] = &[
    ("Enter", "send the line to the conversation shown"),
    (
        "/join, LIST",
        "a / or a command word in capitals: a command",
    ),
    ("Ctrl-N / Ctrl-P", "next / previous conversation"),
    ("PgUp / PgDn", "scroll back / forward"),
    ("Up / Down", "earlier lines you typed"),
    ("Tab", "complete a command, #group or @user"),
    ("Ctrl-C", "clear the line; twice in a row quits"),
    ("Ctrl-D", "quit (on an empty line)"),
    ("?", "this help (any key closes it)"),
];

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let transfers = app.transfers.len().min(4) as u16;
    let [main, gauges, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(transfers),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let [list, pane] =
        Layout::horizontal([Constraint::Length(20), Constraint::Min(10)]).areas(main);
    draw_list(f, app, list);
    draw_pane(f, app, pane);
    draw_transfers(f, app, gauges);
    draw_input(f, app, input);
    draw_status(f, app, status);
    if app.help {
        draw_help(f);
    }
}

fn draw_list(f: &mut Frame, app: &App, area: Rect) {
    let items: Vec<ListItem> = app
        .panes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mark = if i == app.selected { ">" } else { " " };
            let text = if p.unread > 0 {
                format!("{mark}{} ({})", p.name, p.unread)
            } else {
                format!("{mark}{}", p.name)
            };
            let style = match (i == app.selected, p.unread > 0) {
                (true, _) => Style::new().add_modifier(Modifier::REVERSED),
                (false, true) => Style::new().add_modifier(Modifier::BOLD),
                _ => Style::new(),
            };
            ListItem::new(text).style(style)
        })
        .collect();
    let block = Block::new().borders(Borders::ALL).title("Conversations");
    f.render_widget(List::new(items).block(block), area);
}

fn draw_pane(f: &mut Frame, app: &App, area: Rect) {
    let pane = &app.panes[app.selected];
    let block = Block::new().borders(Borders::ALL).title(pane.name.as_str());
    let inner = block.inner(area);
    f.render_widget(block, area);
    let width = usize::from(inner.width.max(1));
    // Wrapped under the text, as at the prompt; the newest at the bottom.
    let lines: Vec<String> = pane
        .lines
        .iter()
        .flat_map(|l| wrap(l, width).lines().map(String::from).collect::<Vec<_>>())
        .collect();
    let height = usize::from(inner.height);
    let end = lines.len().saturating_sub(pane.scroll.min(lines.len()));
    let start = end.saturating_sub(height);
    let shown: Vec<Line> = lines[start..end].iter().map(|l| styled(l)).collect();
    f.render_widget(Paragraph::new(shown), inner);
}

/// A line with its nick in the nick's colour and errors in red.
fn styled(line: &str) -> Line<'_> {
    if line.starts_with("!!") {
        return Line::styled(line, Style::new().fg(Color::Red));
    }
    if let (Some(a), Some(b)) = (line.find('<'), line.find("> ")) {
        if a < b {
            if let Ok(who) = Username::parse(&line[a + 1..b]) {
                let color = match nick_color(&who) {
                    31 => Color::Red,
                    32 => Color::Green,
                    33 => Color::Yellow,
                    34 => Color::Blue,
                    35 => Color::Magenta,
                    _ => Color::Cyan,
                };
                return Line::from(vec![
                    Span::raw(&line[..a]),
                    Span::styled(&line[a..=b], Style::new().fg(color)),
                    Span::raw(&line[b + 1..]),
                ]);
            }
        }
    }
    Line::raw(line)
}

fn draw_transfers(f: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = app
        .transfers
        .values()
        .take(usize::from(area.height))
        .map(|(label, p)| Line::raw(format!(" {label} {}", gauge(p))))
        .collect();
    f.render_widget(Paragraph::new(lines), area);
}

fn draw_input(f: &mut Frame, app: &App, area: Rect) {
    let who = app
        .chat
        .me
        .as_ref()
        .map_or("muchat".to_string(), ToString::to_string);
    let (title, text) = match &app.secret {
        Some(_) => (
            "password (hidden)".to_string(),
            "*".repeat(app.input.chars().count()),
        ),
        None => (format!("{who}> "), app.input.clone()),
    };
    let block = Block::new().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    // Keep the cursor in view on a long line.
    let width = usize::from(inner.width.max(1));
    let skip = app.cursor.saturating_sub(width - 1);
    let visible: String = text.chars().skip(skip).collect();
    f.render_widget(Paragraph::new(visible).block(block), area);
    let x = inner.x + (app.cursor - skip) as u16;
    f.set_cursor_position((x.min(inner.right().saturating_sub(1)), inner.y));
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let who = app
        .chat
        .me
        .as_ref()
        .map_or("not logged in".to_string(), ToString::to_string);
    let state = if app.online { "online" } else { "offline" };
    let fp: String = app.fingerprint.chars().take(16).collect();
    let text = format!(" {}  {fp}…  {who}  {state}   ? keys", app.server);
    f.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)),
        area,
    );
}

fn draw_help(f: &mut Frame) {
    let area = f.area();
    let width = area.width.min(76);
    let height = (KEYS.len() as u16 + 2).min(area.height);
    let rect = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| Line::raw(format!(" {k:16} {what}")))
        .collect();
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title("Keys")),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::progress::Progress;
    use crate::client::testing::message;
    use crate::client::ClientEvent;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(app: &App) -> String {
        let mut t = Terminal::new(TestBackend::new(80, 16)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_screen_shows_conversations_the_pane_a_transfer_and_the_status() {
        let mut app = App::new("127.0.0.1:9000", "SHA256:ZwFERt93zVS6kc1nOGW0");
        app.chat.me = Some(Username::parse("alice").unwrap());
        app.event(&message("#ops:1", "bob", "the build is green"));
        app.event(&message("@carol:1", "carol", "psst"));
        app.select(1);
        app.event(&ClientEvent::UploadProgress {
            id: 7,
            path: "big.iso".into(),
            progress: Progress {
                done: 24_000_000,
                size: 50_000_000,
                elapsed: std::time::Duration::from_secs(2),
            },
        });
        let s = screen(&app);
        assert!(s.contains(">#ops"), "{s}");
        assert!(s.contains(" @carol (1)"), "{s}");
        assert!(s.contains("<bob> the build is green"), "{s}");
        assert!(
            !s.contains("psst"),
            "another pane's line is not shown:\n{s}"
        );
        assert!(
            s.contains("big.iso (sending) [####......] 48% of 50 MB"),
            "{s}"
        );
        assert!(s.contains("alice>"), "{s}");
        assert!(s.contains("127.0.0.1:9000") && s.contains("online"), "{s}");
    }

    #[test]
    fn a_password_is_never_drawn_and_help_lists_the_keys() {
        let mut app = App::new("h:1", "SHA256:x");
        app.secret = Some(crate::command::Command::Help);
        app.input = "hunter2".into();
        app.cursor = 7;
        let s = screen(&app);
        assert!(!s.contains("hunter2") && s.contains("*******"), "{s}");
        let mut app = App::new("h:1", "SHA256:x");
        app.help = true;
        let s = screen(&app);
        assert!(s.contains("Ctrl-N / Ctrl-P"), "{s}");
    }

    #[test]
    fn the_newest_lines_show_and_page_up_scrolls_back() {
        let mut app = App::new("h:1", "SHA256:x");
        for i in 0..40 {
            app.event(&message("#ops:1", "bob", &format!("line {i}")));
        }
        app.select(1);
        let s = screen(&app);
        assert!(s.contains("line 39") && !s.contains("line 20 "), "{s}");
        app.panes[1].scroll = 30;
        let s = screen(&app);
        assert!(s.contains("line 9") && !s.contains("line 39"), "{s}");
    }
}
