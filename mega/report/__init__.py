"""Tables, figures and videos for people to look at."""
