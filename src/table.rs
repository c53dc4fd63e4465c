//! Aligned text tables for people: columns two spaces apart, the last one not padded.

/// Rows (the header first) as lines of left-aligned columns.
pub fn aligned<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(known) => *known = (*known).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells = row.as_ref();
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < cells.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_end_without_spaces() {
        let rows = [
            ["ID".to_string(), "STATE".to_string(), "TITLE".to_string()],
            ["1.10".to_string(), "done".to_string(), String::new()],
        ];
        assert_eq!(aligned(&rows), "ID    STATE  TITLE\n1.10  done\n");
    }
}
