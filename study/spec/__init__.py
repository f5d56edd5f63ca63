"""What a study is: a study file read strictly into a StudySpec, its parameters, its grid or Optuna distributions."""
