# nbgrader for the grader account: formgrader and every nbgrader command it runs, from any folder, use
# the course's own configuration. hub/setup.sh installs this as ~/.jupyter/nbgrader_config.py of the
# grader account, with its course folder in place of @HUB_COURSE_DIR@.
load_subconfig("@HUB_COURSE_DIR@/course_config.py")  # noqa: F821 - defined when nbgrader loads this file
# Collection takes a submission only from an account of the course's student group, in its own name
# (autograder/collect.py); hub/setup.sh puts its group here in place of @HUB_STUDENT_GROUP@.
c = get_config()  # noqa: F821
c.SafeExchangeCollect.student_group = "@HUB_STUDENT_GROUP@"
