"""Result files, and the reports and comparisons made from them."""
