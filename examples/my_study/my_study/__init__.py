"""A user's own package: a dataset function and a model class the study trains (README: Your own
data and model). Nothing here is part of the project; it imports only src.data.Dataset."""
