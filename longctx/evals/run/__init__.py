"""How evaluation cells run: processes sharing work, the results journal, the NLL of one sequence."""
