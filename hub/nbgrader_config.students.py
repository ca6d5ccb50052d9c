# nbgrader for every account on the hub (students and the grader): the course and the exchange.
# hub/setup.sh installs this as <shared venv>/etc/jupyter/nbgrader_config.py, with the exchange it made
# in place of @HUB_EXCHANGE@. The hub passes ATTENTION_SURGEON_EXCHANGE to the servers it starts; it wins.
import os

c = get_config()  # noqa: F821 - defined when nbgrader loads this file
c.CourseDirectory.course_id = "attention-surgeon"
c.Exchange.root = os.environ.get("ATTENTION_SURGEON_EXCHANGE", "@HUB_EXCHANGE@")
