"""Reading a results folder, judging each model and showing it: load -> judge -> text, plots -> page."""
